"""What a GPU holds, for sizing grids: its SM count, one SM's limits, the occupancy rule.

Shared by both losses' launchers (:mod:`.vae.launch`, :mod:`.tcvae.launch`) and by
:mod:`betavae_triton.tools`, which plans launches for a described GPU without one. A
:class:`GPU` is either read off a CUDA device (:func:`gpu_of`) or described by hand
(:data:`H100`); grids are planned from it, never from a patched module.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch


class SMLimits(NamedTuple):
    """What one SM holds: registers, threads, blocks, shared memory (bytes, and the bytes
    reserved per block)."""

    registers: int
    threads: int
    blocks: int
    shared: int
    reserved_shared: int


class GPU(NamedTuple):
    """A GPU as the launchers see it: ``sm_count`` SMs of ``limits`` each; ``index`` is
    the CUDA device's index when the description was read off one (None for a GPU
    described by hand: nothing compiled for it has run, so no occupancy was measured)."""

    sm_count: int
    limits: SMLimits
    index: int | None = None


H100_SM = SMLimits(65536, 2048, 32, 228 * 1024, 1024)
#: An H100 SXM (132 SMs): the GPU that ``perf.codegen`` plans for.
H100 = GPU(132, H100_SM)


def device_index(device: torch.device) -> int:
    """A CUDA device's index (``cuda`` alone means the current device)."""
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.cache
def sm_count(index: int) -> int:
    """The number of SMs of CUDA device ``index``."""
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.cache
def sm_limits(index: int) -> SMLimits:
    """One SM's limits on CUDA device ``index`` (an H100's where torch does not say)."""
    props = torch.cuda.get_device_properties(index)
    return SMLimits(
        getattr(props, "regs_per_multiprocessor", H100_SM.registers),
        getattr(props, "max_threads_per_multi_processor", H100_SM.threads),
        H100_SM.blocks,
        getattr(props, "shared_memory_per_multiprocessor", H100_SM.shared),
        H100_SM.reserved_shared,
    )


def gpu_of(device: torch.device) -> GPU | None:
    """The :class:`GPU` that tensors on ``device`` run on; None off CUDA (the interpreter)."""
    if device.type != "cuda":
        return None
    index = device_index(device)
    return GPU(sm_count(index), sm_limits(index), index)


def resident_blocks(registers: int, shared: int, num_warps: int, limits: SMLimits) -> int:
    """Blocks of a kernel an SM holds at once: registers (allocated per warp in units of
    256), threads, blocks and shared memory each bound them."""
    regs_per_warp = -(-registers * 32 // 256) * 256
    by_registers = limits.registers // max(regs_per_warp, 1) // num_warps
    by_threads = limits.threads // (32 * num_warps)
    by_shared = limits.shared // (shared + limits.reserved_shared)
    return min(by_registers, by_threads, by_shared, limits.blocks)


# Blocks per SM that a kernel, once compiled and run on a GPU, turned out to allow (from
# its registers and shared memory), by (device index, *kernel key): a later launch never
# plans more.
RESIDENT: dict[tuple, int] = {}


def measured_resident(gpu: GPU | None, key: tuple) -> int | None:
    """Blocks per SM measured for the kernel ``key`` on ``gpu`` (None: not yet run)."""
    if gpu is None or gpu.index is None:
        return None
    return RESIDENT.get((gpu.index, *key))


def note_compiled(compiled, gpu: GPU | None, key: tuple) -> None:
    """Read the registers and shared memory of a kernel that just ran on ``gpu`` (what a
    direct launch returns; nothing under ``torch.compile``) into :data:`RESIDENT`."""
    registers = getattr(compiled, "n_regs", None)
    if gpu is None or gpu.index is None or not registers:
        return
    shared = getattr(compiled.metadata, "shared", 0)
    blocks = resident_blocks(registers, shared, compiled.metadata.num_warps, gpu.limits)
    RESIDENT[(gpu.index, *key)] = max(1, blocks)
