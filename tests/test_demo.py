"""Tests of the demo (``python -m betavae_triton.demo``): the sprite generator, the MIG,
the command line's errors, a short single-process run and a two-rank DistributedDataParallel
run under ``torch.distributed.run`` on CPU (gloo), each also with ``--loss btcvae``.

The runs are tiny (a few steps of a narrow model on a few hundred sprites); the whole file
takes well under a minute on two CPU cores.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from betavae_triton import resolved_backend
from betavae_triton.demo import DemoConfig
from betavae_triton.demo.__main__ import build_parser, main, parse_config
from betavae_triton.demo.config import LOSS_DEFAULTS, DistInfo, default_device
from betavae_triton.demo.evaluate import evaluate
from betavae_triton.demo.losses import decoder_distribution, make_loss, make_train_loss
from betavae_triton.demo.mig import mig
from betavae_triton.demo.model import ConvVAE
from betavae_triton.demo.report import FIGURES
from betavae_triton.demo.sprites import (
    FACTOR_NAMES,
    FACTOR_SIZES,
    IMAGE_SIZE,
    make_sprites,
    render,
)

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / "betavae_triton" / "demo"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS = 12
LATENT = 4
CHANNELS = 8
TINY = [
    "--steps", str(STEPS),
    "--n-train", "256",
    "--n-eval", "256",
    "--batch-size", "16",
    "--latent-dim", str(LATENT),
    "--channels", str(CHANNELS),
    "--log-every", "4",
    "--lr", "1e-2",  # a few steps of a narrow model: a large step makes the loss fall clearly
    "--device", "cpu",
]  # fmt: skip


# --- the sprites ------------------------------------------------------------------------


def test_sprites_are_seeded():
    a = make_sprites(96, seed=[7, 0, 0])
    b = make_sprites(96, seed=[7, 0, 0])
    c = make_sprites(96, seed=[7, 1, 0])
    assert torch.equal(a.images, b.images)
    np.testing.assert_array_equal(a.factors, b.factors)
    assert not np.array_equal(a.factors, c.factors)
    assert not torch.equal(a.images, c.images)


def test_sprites_are_binary_with_their_factors():
    n = 2000
    data = make_sprites(n, seed=3)
    assert len(data) == n
    assert data.images.shape == (n, 1, IMAGE_SIZE, IMAGE_SIZE)
    assert data.images.dtype == torch.uint8
    assert set(data.images.unique().tolist()) == {0, 1}
    x = data.batch(slice(0, 5))
    assert x.dtype == torch.float32 and x.shape == (5, 1, IMAGE_SIZE, IMAGE_SIZE)

    assert data.factors.shape == (n, len(FACTOR_NAMES)) == (n, 5)
    assert data.factors.dtype == np.int64
    for k, size in enumerate(FACTOR_SIZES):
        column = data.factors[:, k]
        assert column.min() == 0 and column.max() == size - 1, FACTOR_NAMES[k]

    img = data.images[:, 0].numpy()
    assert (img.sum(axis=(1, 2)) >= 20).all(), "every image holds a visible sprite"
    border = np.concatenate([img[:, 0], img[:, -1], img[:, :, 0], img[:, :, -1]], axis=1)
    assert border.sum() == 0, "sprites lie wholly inside the image"


def _centroid(image: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(image)
    return np.array([cols.mean(), rows.mean()])  # (x, y)


def test_each_factor_moves_the_sprite_as_named():
    base = np.array([0, 3, 0, 10, 20])
    variants = np.repeat(base[None], 7, axis=0)
    variants[1, 0] = 1  # ellipse
    variants[2, 0] = 2  # heart
    variants[3, 1] = 5  # larger
    variants[4, 2] = 10  # rotated by a quarter turn... of a square: the same image
    variants[5, 3] = 25  # further right
    variants[6, 4] = 2  # higher up
    img = render(variants)
    area = img.sum(axis=(1, 2))
    assert len({img[i].tobytes() for i in range(3)}) == 3, "three distinct shapes"
    assert area[3] > area[0]
    np.testing.assert_array_equal(img[4], img[0])
    odd = variants[:1].copy()
    odd[0, 2] = 5  # 45 degrees: a square stands on its corner
    assert not np.array_equal(render(odd)[0], img[0])
    shift_x = _centroid(img[5]) - _centroid(img[0])
    shift_y = _centroid(img[6]) - _centroid(img[0])
    assert shift_x[0] > 10 and abs(shift_x[1]) < 1
    assert shift_y[1] < -10 and abs(shift_y[0]) < 1


# --- the MIG ----------------------------------------------------------------------------


def test_mig_of_a_perfect_and_of_an_uninformative_code():
    rng = np.random.default_rng(0)
    factors = np.stack([rng.integers(0, 3, 5000), rng.integers(0, 6, 5000)], axis=1)
    perfect = np.concatenate([factors.astype(float), rng.normal(size=(5000, 2))], axis=1)
    score, per_factor, mi = mig(perfect, factors)
    assert mi.shape == (4, 2)
    assert score > 0.95 and (per_factor > 0.95).all()
    score, _, _ = mig(rng.normal(size=(5000, 4)), factors)
    assert 0.0 <= score < 0.05


# --- the command line -------------------------------------------------------------------


def test_defaults():
    config = parse_config([])
    assert config.device == default_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    assert DemoConfig().device == default_device()
    assert config.compile and config.dist == "bernoulli" and config.beta == 6.0
    assert config.loss == "betavae"
    assert config.steps == 2000
    assert config.out == Path("demo-output")
    assert not parse_config(["--no-compile"]).compile


def test_estimator_option_reaches_the_loss():
    assert parse_config(["--loss", "btcvae", "--device", "cpu"]).estimator == "mss"
    config = parse_config(["--loss", "btcvae", "--estimator", "mws", "--device", "cpu"])
    assert config.estimator == "mws"
    assert make_train_loss(config, DistInfo()).estimator == "mws"


def test_loss_defaults_apply_to_their_loss_and_yield_to_the_command_line(monkeypatch):
    """``LOSS_DEFAULTS`` (the study's chosen settings) change the defaults of their loss
    alone, an option given wins, and the help's epilog names them."""
    monkeypatch.setitem(LOSS_DEFAULTS, "btcvae", {"batch_size": 256, "kl_warmup": 500})
    config = parse_config(["--loss", "btcvae", "--device", "cpu"])
    assert (config.batch_size, config.kl_warmup) == (256, 500)
    config = parse_config(["--loss", "btcvae", "--batch-size", "32", "--device", "cpu"])
    assert (config.batch_size, config.kl_warmup) == (32, 500)
    config = parse_config(["--device", "cpu"])
    assert (config.batch_size, config.kl_warmup) == (DemoConfig().batch_size, 0)
    epilog = " ".join(build_parser().epilog.split())
    assert "--loss btcvae: --batch-size 256, --kl-warmup 500" in epilog


@pytest.mark.parametrize("loss", ["betavae", "btcvae"])
def test_both_losses_read_the_binary_sprites_as_bernoulli(loss):
    """The demo names its decoder distribution (bernoulli by default) for both losses: the
    change of BetaTCVAELoss's own default to "normal" (issue 24) leaves its runs as they
    were."""
    config = parse_config(["--loss", loss, "--device", "cpu"])
    assert make_train_loss(config, DistInfo()).default_dist == "bernoulli"


def test_compile_flag_help_states_its_default_plainly():
    """``--compile`` is on by default and ``--no-compile`` turns it off: the help shows them
    together with the default ``True`` (a lone ``--no-compile ... (default: True)`` read as
    if the flag itself were on by default)."""
    text = " ".join(build_parser().format_help().split())
    assert "[--compile | --no-compile]" in text
    assert "--compile, --no-compile run the loss step under torch.compile" in text
    entry = text.split("--compile, --no-compile ", 1)[1].split(" --lr ", 1)[0]
    assert entry.endswith("(default: True)")
    assert parse_config(["--no-compile", "--compile"]).compile


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "-5"], "--steps: must be a positive integer"),
        (["--steps", "0"], "--steps: must be a positive integer"),
        (["--steps", "ten"], "--steps: expected a positive integer"),
        (["--beta", "-1"], "--beta: must be non-negative"),
        (["--beta", "nan"], "--beta: must be finite"),
        (["--lr", "0"], "--lr: must be positive"),
        (["--batch-size", "0"], "--batch-size: must be a positive integer"),
        (["--batch-size", "300", "--n-train", "256"], "exceeds --n-train"),
        (["--latent-dim", "1"], "--latent-dim must be at least 2"),
        (["--seed", "-1"], "--seed: must be a non-negative integer"),
        (["--kl-warmup", "-3"], "--kl-warmup: must be a non-negative integer"),
        (["--dist", "poisson"], "--dist: invalid choice"),
        (["--loss", "factorvae"], "--loss: invalid choice"),
        (["--loss", "btcvae", "--batch-size", "1"], "--loss btcvae needs --batch-size 2"),
        (["--device", "tpu"], "--device: must be 'cpu', 'cuda' or 'cuda:N'"),
        # Without CUDA: not available; with it: one index past the last device.
        (["--device", f"cuda:{torch.cuda.device_count()}"], "--device: 'cuda:"),
        (["--frobnicate"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m betavae_triton.demo")
    assert message in err


# --- the public API only -----------------------------------------------------------------

PACKAGE = "betavae_triton"
DEMO = f"{PACKAGE}.demo"


def _is_private(name: str) -> bool:
    """A leading underscore, except dunders (``__version__``, ``__main__``)."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_package_names(source: str, package: str = DEMO) -> list[str]:
    """The private names of ``betavae_triton`` outside its ``demo`` that ``source`` uses.

    Parameters
    ----------
    source : str
        Python source of a module of ``package``.
    package : str, default="betavae_triton.demo"
        The package that holds the module (for relative imports).

    Returns
    -------
    names : list of str
        Every dotted name, ``betavae_triton.<...>``, that the module imports (absolutely,
        relatively, or as a string given to ``importlib``) or reads as an attribute of an
        imported module or object, and that has a private part, i.e. one that starts
        with ``_``. The demo's own modules (``betavae_triton.demo.<...>``) may keep private
        helpers for each other.
    """
    found: list[str] = []
    bound: dict[str, str] = {}  # local name -> the dotted name of the package it stands for

    def check(dotted: str) -> None:
        parts = dotted.split(".")
        if parts[0] != PACKAGE or parts[:2] == DEMO.split("."):
            return
        for i, part in enumerate(parts[1:], start=2):
            if _is_private(part):
                found.append(".".join(parts[:i]))  # up to the first private part
                return

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check(alias.name)
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            check(base)
            for alias in node.names:
                check(f"{base}.{alias.name}")
                bound[alias.asname or alias.name] = f"{base}.{alias.name}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith(f"{PACKAGE}.") and node.value.isascii():
                if all(part.isidentifier() for part in node.value.split(".")):
                    check(node.value)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            attrs = []
            value: ast.expr = node
            while isinstance(value, ast.Attribute):
                attrs.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in bound:
                check(".".join([bound[value.id], *reversed(attrs)]))
    return sorted(set(found))


def test_demo_files_exist_to_check():
    names = {path.name for path in DEMO_DIR.glob("*.py")}
    assert {"__init__.py", "__main__.py", "train.py", "model.py"} <= names


@pytest.mark.parametrize(
    "path", sorted(DEMO_DIR.rglob("*.py")), ids=lambda path: str(path.relative_to(DEMO_DIR))
)
def test_demo_uses_only_the_public_api(path):
    rel = path.relative_to(DEMO_DIR.parent).with_suffix("")
    package = ".".join([PACKAGE, *rel.parts[:-1]])
    assert _private_package_names(path.read_text(), package) == [], (
        f"{path.relative_to(ROOT)} reaches into betavae_triton's private names: the demo "
        "shows the public API (betavae_triton.__all__) only"
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from betavae_triton._dispatch import resolve_backend", ["betavae_triton._dispatch"]),
        ("from .. import _ops", ["betavae_triton._ops"]),
        ("from .._eager import kl_elements", ["betavae_triton._eager"]),
        ("from ..functional import _backend_for", ["betavae_triton.functional._backend_for"]),
        ("import betavae_triton._launch as launch", ["betavae_triton._launch"]),
        (
            "import betavae_triton\nbetavae_triton._dispatch.resolve_backend('auto', d)",
            ["betavae_triton._dispatch"],
        ),
        (
            "from betavae_triton import BetaVAELoss\nBetaVAELoss._posterior(q)",
            ["betavae_triton.BetaVAELoss._posterior"],
        ),
        (
            "import importlib\nimportlib.import_module('betavae_triton._ops')",
            ["betavae_triton._ops"],
        ),
        # The public API, and the demo's own helpers, pass.
        ("from betavae_triton import BetaVAELoss, beta_vae_loss, kl_normal_loss", []),
        ("import betavae_triton\nv = betavae_triton.__version__", []),
        ("from .train import _batches\nfrom . import plots", []),
        ("from .mig import entropy\nimport torch._dynamo", []),
    ],
)
def test_private_name_check_finds_what_it_should(source, expected):
    assert _private_package_names(source) == expected


@pytest.mark.parametrize("requested", ["auto", "triton", "eager"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_loss_backend_follows_the_documented_rule(requested, device):
    from betavae_triton._dispatch import resolve_backend  # the package's own rule

    triton = importlib.util.find_spec("triton") is not None
    rule = {"auto": "triton" if device == "cuda" and triton else "eager"}
    got = resolved_backend(requested, torch.device(device))
    assert got == rule.get(requested, requested)
    with pytest.raises(ValueError, match="backend must be"):
        resolved_backend("fast", torch.device(device))
    try:
        resolved = resolve_backend(requested, torch.device(device))
    except RuntimeError:  # "triton" where it cannot run: the loss raises before run.json
        return
    assert got == resolved


def test_evaluation_takes_the_kl_per_dimension_from_the_loss():
    """The held-out KL per latent is the loss's ``kl_per_dim``, averaged over batches of
    unequal size (512 + 88 sprites) as one mean over every sprite."""
    torch.manual_seed(0)
    model = ConvVAE(LATENT, CHANNELS).eval()
    data = make_sprites(600, seed=5)
    config = DemoConfig(latent_dim=LATENT, channels=CHANNELS, device="cpu")
    ev = evaluate(model, data, make_loss(config, kl_per_dim=True), config.dist, torch.device("cpu"))
    with torch.no_grad():
        mu, scale = model.encode(data.batch(slice(0, len(data))))
    kl = (0.5 * (mu.double() ** 2 + scale.double() ** 2 - 1) - scale.double().log()).mean(0)
    assert ev["mu"].shape == (600, LATENT)
    np.testing.assert_allclose(ev["mu"], mu.numpy(), rtol=1e-5, atol=1e-6)
    assert ev["kl_per_dim"].shape == (LATENT,)
    np.testing.assert_allclose(ev["kl_per_dim"], kl.numpy(), rtol=1e-5, atol=1e-7)


# --- whole runs -------------------------------------------------------------------------


TCVAE_TERMS = ("mi_loss", "tc_loss", "dw_kl_loss")


def _check_outputs(out: Path, *, world_size: int, compiled: bool, loss: str = "betavae") -> dict:
    assert sorted(p.name for p in out.iterdir()) == sorted([*FIGURES, "run.json"])
    for name in FIGURES:
        blob = (out / name).read_bytes()
        assert blob.startswith(PNG_MAGIC) and 5_000 < len(blob) < 300_000, name
    run = json.loads((out / "run.json").read_text())
    assert run["args"]["steps"] == STEPS and run["args"]["latent_dim"] == LATENT
    assert run["args"]["out"] == str(out)
    assert run["world_size"] == world_size and run["device"] == "cpu"
    assert run["compiled"] is compiled and run["loss_backend"] == "eager"
    assert (run["timings"]["compile_s"] is None) is not compiled
    for key in ("data_s", "first_step_s", "train_s", "eval_s", "total_s", "steps_per_s"):
        assert run["timings"][key] > 0, key
    assert run["timings"]["total_s"] >= run["timings"]["train_s"]
    assert run["args"]["loss"] == loss
    tcvae = loss == "btcvae"
    terms = TCVAE_TERMS if tcvae else ()
    for key in ("initial", "final", "final_mean"):
        losses = run[key]
        assert set(losses) == {"loss", "rec_loss", "kl_loss", *terms}
        assert all(np.isfinite(v) for v in losses.values())
        assert losses["rec_loss"] > 0 and losses["kl_loss"] >= 0
        beta = run["args"]["beta"]
        if tcvae:  # alpha = gamma = 1, beta weighs the total correlation
            mi, tc, dw_kl = (losses[k] for k in TCVAE_TERMS)
            want = losses["rec_loss"] + mi + beta * tc + dw_kl
        else:
            want = losses["rec_loss"] + beta * losses["kl_loss"]
        assert losses["loss"] == pytest.approx(want)
    assert run["final"]["loss"] < 0.9 * run["initial"]["loss"], "the loss falls"
    assert set(run["curves"]) == {"loss", "rec_loss", "kl_loss", *terms}
    assert all(len(c) == STEPS for c in run["curves"].values())
    assert all(np.isfinite(c).all() for c in run["curves"].values())
    if tcvae:
        n_train = run["args"]["n_train"]
        assert run["tcvae"] == {
            "alpha": 1.0,
            "gamma": 1.0,
            "dataset_size": n_train * world_size,  # every rank's sprites
            "estimator": "mss",
            "gather": world_size > 1,
            "bank_size": 0,
            "bank_refresh": 0,
        }
    else:
        assert "tcvae" not in run
    assert 0.0 <= run["mig"] <= 1.0
    assert set(run["mig_per_factor"]) == set(FACTOR_NAMES)
    assert len(run["kl_per_dim"]) == LATENT and min(run["kl_per_dim"]) >= 0
    assert len(run["mutual_information"]) == LATENT
    for row in run["mutual_information"]:
        assert set(row) == set(FACTOR_NAMES) and min(row.values()) >= 0
    assert set(run["factor_entropy"]) == set(FACTOR_NAMES)
    assert 0 <= run["active_dims"] <= LATENT
    assert sorted(Path(f).name for f in run["files"]) == sorted([*FIGURES, "run.json"])
    return run


@pytest.mark.usefixtures("one_thread")
def test_single_process_run_writes_figures_and_json(tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*TINY, "--no-compile", "--kl-warmup", "4", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "MIG: " in stdout and str(out.resolve()) in stdout
    run = _check_outputs(out, world_size=1, compiled=False)
    assert run["params_identical_across_ranks"] is None


@pytest.mark.usefixtures("one_thread")
def test_btcvae_run_records_mi_tc_and_dw_kl(tmp_path, capsys):
    """``--loss btcvae``, compiled as by default (one graph: ``fullgraph=True``), with a KL
    warm-up: run.json holds the three terms, finite, and the step compiled once although
    the weights changed at every warm-up step."""
    from torch._dynamo.utils import counters

    out = tmp_path / "out"
    torch._dynamo.reset()
    counters.clear()
    try:
        argv = [*TINY, "--loss", "btcvae", "--kl-warmup", "4", "--out", str(out)]
        assert main(argv) == 0
        graphs = counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
    stdout = capsys.readouterr().out
    assert "MIG: " in stdout and ", tc " in stdout and ", dw_kl " in stdout
    run = _check_outputs(out, world_size=1, compiled=True, loss="btcvae")
    assert run["params_identical_across_ranks"] is None
    assert graphs == 1, f"the loss step compiled {graphs} times"


@pytest.mark.usefixtures("one_thread")
def test_quiet_run_without_figures_writes_run_json_and_probes_the_tc(tmp_path, capsys):
    """What a study's run asks for: no figures, nothing printed, the held-out
    reconstruction and the TC probe (sizes below n_eval; the bias against the large-batch
    estimate) in run.json."""
    from betavae_triton.demo import run

    out = tmp_path / "out"
    config = DemoConfig(
        device="cpu", steps=STEPS, loss="btcvae", estimator="mws", batch_size=16,
        latent_dim=LATENT, channels=CHANNELS, n_train=256, n_eval=256, lr=1e-2,
        compile=False, out=out, figures=False, quiet=True, tc_probe=(64, 16, 256, 1000),
    )  # fmt: skip
    summary = run(config)
    captured = capsys.readouterr()
    assert captured.out == "" and "training" not in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]
    saved = json.loads((out / "run.json").read_text())
    assert saved["files"] == [str(out / "run.json")]
    assert saved["args"]["tc_probe"] == [64, 16, 256, 1000] and saved["args"]["estimator"] == "mws"
    assert saved["tcvae"]["estimator"] == "mws"
    assert np.isfinite(saved["eval_rec_loss"]) and saved["eval_rec_loss"] > 0
    probe = saved["tc_probe"]
    assert probe == summary["tc_probe"]
    assert (probe["estimator"], probe["dataset_size"], probe["large_batch"]) == ("mws", 256, 256)
    assert set(probe["large"]) == {"mi", "tc", "dw_kl"}
    assert [b["batch_size"] for b in probe["batches"]] == [16, 64]  # 256 and 1000 skipped
    for b in probe["batches"]:
        assert b["chunks"] == 256 // b["batch_size"]
        assert all(np.isfinite(b[k]) for k in ("mi", "tc", "dw_kl"))
        assert b["tc_bias"] == pytest.approx(b["tc"] - probe["large"]["tc"], abs=1e-12)


def test_model_hands_the_loss_the_sample_it_decoded():
    torch.manual_seed(0)
    model = ConvVAE(LATENT, CHANNELS)
    x = make_sprites(8, seed=2).batch(slice(0, 8))
    logits, mu, scale, z = model(x)
    assert z.shape == mu.shape == scale.shape == (8, LATENT)
    torch.testing.assert_close(logits, model.decode_logits(z))
    assert not torch.equal(z, mu), "a sample, not the mean"


def _torchrun_two_ranks(tmp_path: Path, *extra: str) -> dict:
    """Run the tiny demo on two gloo ranks; check the outputs of rank 0 and that both ranks
    end with the same trained parameters, from different data. Returns run.json."""
    out, params = tmp_path / "out", tmp_path / "params" / "final"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "betavae_triton.demo", *TINY, "--out", str(out), "--check-params", str(params),
        *extra,
    ]  # fmt: skip
    proc = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("MIG: ") == 1, "rank 0 alone reports"
    assert "on cpu x2" in proc.stdout

    # Rank 0 alone writes the outputs.
    loss = "btcvae" if "btcvae" in extra else "betavae"
    run = _check_outputs(out, world_size=2, compiled="--no-compile" not in extra, loss=loss)
    assert run["params_identical_across_ranks"] is True

    saved = [torch.load(params.with_name(f"final.rank{r}.pt")) for r in (0, 1)]
    assert [s["rank"] for s in saved] == [0, 1] and all(s["world_size"] == 2 for s in saved)
    assert saved[0]["data_checksum"] != saved[1]["data_checksum"], "each rank its own shard"
    first, second = (s["state_dict"] for s in saved)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    torch.manual_seed(0)
    initial = ConvVAE(LATENT, CHANNELS).state_dict()
    assert any(not torch.equal(first[k], initial[k]) for k in first), "the ranks trained"
    return run


def test_torchrun_two_cpu_ranks_end_with_identical_parameters(tmp_path):
    """Compiled, as by default."""
    _torchrun_two_ranks(tmp_path)


def test_torchrun_btcvae_gathers_and_ranks_end_identical(tmp_path):
    """``--loss btcvae`` under DDP: ``gather=True`` (each rank's z scored against the
    posteriors of the global batch, N = both ranks' sprites), the ranks' parameters end
    identical. Eager, to keep it short: the compiled DDP step is the test above's."""
    run = _torchrun_two_ranks(tmp_path, "--loss", "btcvae", "--no-compile")
    assert run["tcvae"]["gather"] is True and run["tcvae"]["dataset_size"] == 2 * 256


def test_bernoulli_decoder_hands_the_loss_its_logits():
    """The demo's decoder returns logits and the loss reads them as logits (the exact
    cross-entropy of issue 8), not sigmoid probabilities."""
    from betavae_triton import BetaVAELoss

    logits = torch.tensor([[[[-150.0, 0.5], [40.0, -2.0]]]])
    x = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    rec = BetaVAELoss().reconstruction_loss(decoder_distribution(logits, "bernoulli"), x)
    exact = (torch.logaddexp(torch.zeros_like(logits), logits) - x * logits).sum()
    torch.testing.assert_close(rec, exact)
