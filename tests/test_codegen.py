"""GPU code quality checked without a GPU (``perf/codegen.py``): every kernel
specialization that the named workloads, an MNI volume and one call per dist and dtype
launch compiles ahead of time for sm_90a, without spills, with 128-bit loads and stores
of p, x and the gradients wherever the layout allows (the finalize excepted), and with
registers that let the launcher's persistent grid fit in one wave on an H100; β-TCVAE's
pairwise kernels load the posteriors as vectors wherever the layout allows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def codegen_json(tmp_path_factory):
    """``python -m perf.codegen --arch 90 --quick``, in a process of its own: the kernels
    must be Triton's compiled functions, not the interpreter's (which conftest sets)."""
    out = tmp_path_factory.mktemp("codegen")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "perf.codegen", "--arch", "90", "--quick", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert "codegen:" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads((out / "codegen.json").read_text())


@pytest.fixture(scope="module")
def analysis(codegen_json):
    """The report's specializations (by label) and workloads."""
    rows = {}
    for label, row in codegen_json["specializations"].items():
        row["arch"] = {int(k): v for k, v in row["arch"].items()}
        rows[label] = SimpleNamespace(**row)
    return rows, codegen_json["workloads"]


def test_every_specialization_compiles_without_spills(analysis):
    rows, _ = analysis
    assert len(rows) >= 20, sorted(rows)
    spilling = {label: row.arch[90]["spill_bytes"] for label, row in rows.items()}
    assert not any(spilling.values()), {k: v for k, v in spilling.items() if v}


def test_data_accesses_are_128_bit_where_the_layout_allows(analysis):
    rows, _ = analysis
    allowed = [row for row in rows.values() if row.vectors_allowed]
    assert len(allowed) >= 10
    bad = [row.spec for row in allowed if not row.vectors_ok]
    assert not bad, bad


def test_the_mni_volume_gets_128_bit_access(analysis):
    """8×1×91×109×91: no size is a multiple of 16, and the reduction over it is one row;
    its full tiles must still be read and written 128 bits at a time."""
    rows, workloads = analysis
    assert "mni-91x109x91" in workloads
    mni = [r for r in rows.values() if "mni-91x109x91" in r.cases]
    rec = [r for r in mni if r.spec.startswith("_reconstruction_fwd_bwd")]
    assert rec and all(r.vectors_allowed and r.vectors_ok for r in rec), [r.spec for r in rec]
    assert all(r.arch[90]["loads_128"] >= 2 and r.arch[90]["stores_128"] >= 1 for r in rec)


def test_persistent_grids_fit_in_one_wave(analysis):
    """The launcher's programs per SM (``GPU_CONFIG``) never exceed the blocks an SM holds
    with the registers and shared memory each compiled kernel needs."""
    rows, _ = analysis
    persistent = [r for r in rows.values() if r.persistent]
    over = {r.spec: (r.programs_per_sm, r.resident_blocks) for r in persistent if not r.one_wave}
    assert not over, over


def test_the_beta_tcvae_kernels_are_compiled_too(analysis):
    """The three minibatch kernels of a forward + backward, float32 at 10 and 128 latents
    and float64, are in the report (without spills, by the test above)."""
    rows, _ = analysis
    names = ("_minibatch_log_densities_fwd", "_minibatch_grad_z", "_minibatch_grad_posterior")
    for name in names:
        specs = [r for r in rows.values() if r.spec.startswith(name)]
        assert {"btcvae-256x10", "btcvae-4096x128", "btcvae-fp64"} <= {
            case for r in specs for case in r.cases
        }, name


def test_the_beta_tcvae_posterior_loads_are_vectors(analysis):
    """The walk of the forward and dL/dz kernels over the posteriors loads μ, 1/σ and c as
    wide as the tile's layout allows in every specialization, and 128 bits a load wherever
    the rows are aligned for it: D a multiple of 16 (32, 128, and 256 latents, where 16
    warps keep a row fewer than the program's threads), of 4 only (24 latents), and
    float64 at 10 latents (rows of an even length). The kernels read the posteriors'
    precomputed 1/σ and c: no exponential for σ an iteration."""
    rows, _ = analysis
    names = ("_minibatch_log_densities_fwd", "_minibatch_grad_z")
    walks = [r for r in rows.values() if r.spec.startswith(names)]
    assert walks and all(r.posterior_bits is not None for r in walks)
    assert [r.spec for r in walks if not r.posterior_ok] == []
    aligned = {"btcvae-256x32", "btcvae-4096x128", "btcvae-4096x256", "btcvae-1024x24"}
    aligned |= {"btcvae-fp64"}
    wide = [r for r in walks if aligned & set(r.cases)]
    assert {case for r in wide for case in r.cases} >= aligned
    assert {r.spec: r.arch[90]["loop_load_bits"] for r in wide if r.posterior_bits != 128} == {}
    assert {
        r.spec: r.arch[90]["loop_load_bits"]
        for r in wide
        if r.arch[90]["loop_load_bits"] != [128, 128, 128]
    } == {}


def test_the_beta_tcvae_grids_fill_one_wave(codegen_json):
    """At B ≥ 256 and D = 10 or 32, each pairwise kernel's grid (row blocks × splits of the
    batch) holds at least as many programs as 132 SMs hold of its compiled code at once;
    the report shows the fill of every launch."""
    grids = codegen_json["tc_grids"]
    assert {"btcvae-256x10", "btcvae-256x32", "btcvae-16384x10"} <= set(grids)
    must = [(name, g) for name, gs in grids.items() for g in gs if g["must_fill"]]
    assert len(must) >= 12
    assert [(name, g["kernel"], g["wave_fill"]) for name, g in must if g["wave_fill"] < 1] == []


def test_vector_width_reader():
    """The PTX reader counts 128-bit accesses as such, and narrower ones apart."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from perf import specializations

    ptx = "ld.global.v4.b32 {%r1}, [%rd1];\nld.global.b16 %h1, [%rd2];\nst.global.v2.b64 [%rd3];"
    assert specializations.count_accesses(ptx) == {"ld128": 1, "ld": 1, "st128": 1, "st": 0}
    # The innermost loop: its header's label, LLVM's comment, the exit block.
    loop = "\n".join(
        [
            "ld.global.b32 %r0, [%rd0];",
            "$L__BB0_2:                              // %.lr.ph",
            "                                        // =>This Inner Loop Header: Depth=1",
            "ld.global.v2.b32 {%r1, %r2}, [%rd1];",
            "ex2.approx.f32 %r3, %r2;",
            "@%p1 bra $L__BB0_2;",
            "$L__BB0_3:                              // %._crit_edge",
            "ld.global.v4.b32 {%r4, %r5, %r6, %r7}, [%rd2];",
        ]
    )
    assert specializations.loop_facts(loop) == ([64], 1)
    assert specializations.loop_facts(ptx) == ([], 0)


def test_tools_plan_the_launches_for_a_described_gpu():
    """``betavae_triton.tools``, what perf/codegen.py plans with: its documented example,
    and grids that follow the described GPU's SM count (no patched module)."""
    import doctest

    import torch

    from betavae_triton import tools

    assert doctest.testmod(tools).failed == 0
    x = torch.empty(8, 1, 128, 128, 128, device="meta")
    p = torch.empty_like(x).requires_grad_()
    mu, sigma = (torch.empty(8, 128, device="meta").requires_grad_() for _ in range(2))
    small = tools.GPU(10, tools.H100_SM)
    for gpu in (tools.H100, small):
        first = tools.beta_vae_launches(x, p, mu, sigma, gpu)[0]
        assert first.kernel.__name__ == "_reconstruction_fwd_bwd"
        per_sm = tools.persistent_programs_per_sm(4)
        assert first.grid == (1, per_sm * gpu.sm_count)
    z = torch.empty(256, 10, device="meta")
    launches = {launch.kernel.__name__: launch for launch in tools.beta_tcvae_launches(z)}
    assert list(launches) == [
        "_posterior_constants", "_minibatch_log_densities_fwd", "_merge_split_log_sum_exps",
        "_minibatch_grad_z", "_minibatch_grad_posterior",
    ]  # fmt: skip
    # 16 row blocks: the batch is split so that 132 SMs get a wave of programs.
    fwd = launches["_minibatch_log_densities_fwd"]
    assert fwd.grid[0] == 16 and fwd.grid[0] * fwd.grid[1] >= 132 * 12
