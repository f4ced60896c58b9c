"""From a recorded kernel launch to what the compiler made of it: the specialization
Triton's JIT would build (:func:`specialize`), compiled ahead of time for an architecture
(:func:`compile_spec`), and what the cubin and the PTX say: registers, spills, shared
memory, 128-bit global accesses, and the loads and exponentials of the innermost loop.
"""

from __future__ import annotations

import functools
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from betavae_triton.tools import KernelLaunch

__all__ = [
    "DTYPES",
    "Compiled",
    "Spec",
    "compile_spec",
    "count_accesses",
    "innermost_loop",
    "loop_facts",
    "resources",
    "specialize",
]

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
DTYPES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float64: "fp64",
    torch.int64: "i64",
    torch.int32: "i32",
}


def _aligned(t: torch.Tensor) -> bool:
    """16-byte alignment of a tensor's data (allocations are; views at an offset may not)."""
    return (t.storage_offset() * t.element_size()) % 16 == 0


@dataclass(frozen=True)
class Spec:
    """A kernel specialization as Triton's JIT would build it from a launch."""

    kernel: str
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, object], ...]
    divisible: tuple[str, ...]
    num_warps: int
    one_row: bool = False

    @property
    def label(self) -> str:
        """The kernel, its upper-case constexprs, argument types, warps: the report's key."""
        consts = ",".join(f"{k}={v}" for k, v in self.constexprs if k.isupper())
        # Pointer dtypes, ":16" where 16-byte aligned; ints as i32/i64, ":16" where
        # divisible by 16 (the specializations Triton's JIT makes from the values).
        args = ",".join(
            t + (":16" if name in self.divisible else "")
            for name, t in self.signature
            if t != "constexpr"
        )
        rows = " one-row" if self.one_row else ""
        return f"{self.kernel}[{consts}] ({args}) w{self.num_warps}{rows}"


def specialize(launch: KernelLaunch) -> Spec:
    """The :class:`Spec` of a launch: pointer dtypes, 16-byte alignment and divisibility
    by 16 (as the JIT's specialization), integers equal to 1 as constants."""
    fn = launch.kernel
    kwargs = dict(launch.kwargs)
    num_warps = kwargs.pop("num_warps", 4)
    signature, constexprs, divisible = [], {}, []
    for name in fn.arg_names:
        value = kwargs[name]
        param = fn.params[fn.arg_names.index(name)]
        if param.is_constexpr:
            constexprs[name] = int(value) if isinstance(value, bool) else value
            signature.append((name, "constexpr"))
        elif isinstance(value, torch.Tensor):
            signature.append((name, "*" + DTYPES[value.dtype]))
            if _aligned(value):
                divisible.append(name)
        elif isinstance(value, bool):
            signature.append((name, "i1"))
        elif isinstance(value, int):
            if value == 1:
                constexprs[name] = 1
                signature.append((name, "constexpr"))
                continue
            signature.append((name, "i64" if abs(value) >= 2**31 else "i32"))
            if value % 16 == 0:
                divisible.append(name)
        else:
            signature.append((name, "fp32"))
    one_row = len(launch.grid) == 2 and launch.grid[0] == 1  # a reduction over one row
    return Spec(
        fn.__name__,
        tuple(signature),
        tuple(constexprs.items()),
        tuple(divisible),
        num_warps,
        one_row,
    )


@dataclass
class Compiled:
    """What the compiler made of a specialization for one architecture."""

    arch: int
    registers: int
    spill_bytes: int
    shared_bytes: int
    loads_128: int
    loads_narrow: int
    stores_128: int
    stores_narrow: int
    compile_s: float
    loop_load_bits: list[int] = field(default_factory=list)  # innermost loop, in order
    loop_exps: int = 0  # exponentials an iteration of the innermost loop


_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_ACCESS = re.compile(r"\b(ld|st)\.global((?:\.[a-z0-9]+)*)")


def _vector_bits(suffix: str) -> int:
    """Bits one PTX global access moves, from its suffix (``.v4.b32`` → 128)."""
    width = re.search(r"\.v(\d)", suffix)
    size = re.search(r"\.[bfsu](\d+)$", suffix)
    return (int(width.group(1)) if width else 1) * (int(size.group(1)) if size else 32)


def count_accesses(ptx: str) -> dict[str, int]:
    """128-bit and narrower global loads and stores in a PTX listing."""
    counts = {"ld128": 0, "ld": 0, "st128": 0, "st": 0}
    for kind, suffix in _ACCESS.findall(ptx):
        counts[kind + ("128" if _vector_bits(suffix) == 128 else "")] += 1
    return counts


_LABEL = re.compile(r"^(\$L__BB\d+_\d+):", re.M)
_LOOP_EXIT = re.compile(r"^\$L__BB\d+_\d+:.*(crit_edge|loopexit)", re.M)


def innermost_loop(ptx: str) -> str:
    """The PTX of the first innermost loop, as LLVM marks it: from its header (the label
    that LLVM's ``Inner Loop Header`` comment follows, with the blocks that the preheader
    jumps over: a rotated loop's latch) to its exit block; "" where there is no loop."""
    marker = ptx.find("Inner Loop Header")
    labels = list(_LABEL.finditer(ptx, 0, max(marker, 0)))
    if marker < 0 or not labels:
        return ""
    header = labels[-1]
    entry = [
        m
        for m in re.finditer(r"bra\.uni\s+" + re.escape(header.group(1)) + ";", ptx)
        if m.end() <= header.start()
    ]
    start = entry[-1].end() if entry else header.start()
    exit_ = _LOOP_EXIT.search(ptx, marker)
    return ptx[start : exit_.start() if exit_ else len(ptx)]


def loop_facts(ptx: str) -> tuple[list[int], int]:
    """``(bits of each global load, exponentials)`` in the innermost loop of a PTX listing:
    ``ex2.approx`` for float32 (``tl.exp``), libdevice's inlined ``__nv_exp`` for float64."""
    body = innermost_loop(ptx)
    bits = [_vector_bits(suffix) for kind, suffix in _ACCESS.findall(body) if kind == "ld"]
    exps = len(re.findall(r"\bex2\.approx", body)) + len(re.findall(r"%__nv_exp\.exit", body))
    return bits, exps


def resources(cubin: bytes) -> tuple[int, int, int]:
    """``(registers, spill (local) bytes, shared bytes)`` of a cubin, by cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [str(CUOBJDUMP), "--dump-resource-usage", f.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    regs, _stack, shared, local = (int(v) for v in _RESOURCES.search(text).groups())
    return regs, local, shared


_KERNELS = {
    "_reconstruction_fwd_bwd": "betavae_triton.kernels.reconstruction",
    "_normal_kl_fwd_bwd": "betavae_triton.kernels.kl",
    "_finalize_loss": "betavae_triton.kernels.finalize",
    "_rescale_grad_inplace": "betavae_triton.kernels.rescale",
    "_minibatch_log_densities_fwd": "betavae_triton.kernels.total_correlation",
    "_minibatch_grad_z": "betavae_triton.kernels.total_correlation",
    "_minibatch_grad_posterior": "betavae_triton.kernels.total_correlation",
    "_merge_split_log_sum_exps": "betavae_triton.kernels.total_correlation",
    "_posterior_constants": "betavae_triton.kernels.total_correlation",
}


@functools.cache
def compile_spec(spec: Spec, arch: int) -> Compiled:
    """Compile ``spec`` ahead of time for ``sm_{arch}`` (``sm_90a`` for 90)."""
    module = __import__(_KERNELS[spec.kernel], fromlist=[spec.kernel])
    fn = getattr(module, spec.kernel)
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in spec.divisible}
    source = ASTSource(fn, dict(spec.signature), dict(spec.constexprs), attrs)
    start = time.perf_counter()
    kernel = triton.compile(
        source, target=GPUTarget("cuda", arch, 32), options={"num_warps": spec.num_warps}
    )
    elapsed = time.perf_counter() - start
    regs, spill, shared = resources(kernel.asm["cubin"])
    counts = count_accesses(kernel.asm["ptx"])
    loop_bits, loop_exps = loop_facts(kernel.asm["ptx"])
    return Compiled(
        arch, regs, spill, max(shared, kernel.metadata.shared), counts["ld128"], counts["ld"],
        counts["st128"], counts["st"], elapsed, loop_bits, loop_exps,
    )  # fmt: skip
