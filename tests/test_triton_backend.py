"""The Triton backend against the float64 reference: layouts, extremes, determinism, launches.

On a CPU these run the kernels under Triton's interpreter (conftest sets TRITON_INTERPRET);
on a GPU the same tests run the compiled kernels. Sizes stay small for the interpreter.
"""

from __future__ import annotations

import zlib

import pytest
import torch
from _helpers import (
    DEVICE,
    DISTS,
    LossInputs,
    assert_close_to_reference,
    assert_grads_match,
    assert_values_match,
    grad_magnitudes,
    value_magnitudes,
)
from hypothesis import given
from hypothesis import strategies as st

import betavae_triton._device as device
import betavae_triton.vae.cpu as cpu_ops
import betavae_triton.vae.launch as launch
import betavae_triton.vae.ops as ops
from betavae_triton import beta_vae_loss, kl_normal_loss, reconstruction_loss
from betavae_triton._checks import check_loss_inputs
from betavae_triton._dispatch import interpreter_launch
from betavae_triton.vae.layout import flatten, reconstruction_order
from betavae_triton.vae.terms import loss_call
from reference import reference_beta_vae_loss


def seed_of(*names: object) -> int:
    """A seed from names, the same in every process (unlike ``hash``)."""
    return zlib.crc32(repr(names).encode())


def _data(dist: str, shape, dtype, gen: torch.Generator):
    """(x, p) valid for ``dist``, as plain contiguous tensors on DEVICE."""
    if dist == "bernoulli":
        x = torch.rand(shape, generator=gen, dtype=torch.float64).round()
        p = torch.rand(shape, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    else:
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        p = torch.randn(shape, generator=gen, dtype=torch.float64)
    return x.to(DEVICE, dtype), p.to(DEVICE, dtype)


def _posterior(shape, dtype, gen: torch.Generator):
    mu = torch.randn(shape, generator=gen, dtype=torch.float64)
    sigma = torch.rand(shape, generator=gen, dtype=torch.float64) + 0.3
    return mu.to(DEVICE, dtype), sigma.to(DEVICE, dtype)


def _leaves(*tensors):
    return [t.detach().requires_grad_() for t in tensors]


def run_ours(x, p, mu, sigma, beta, dist, backend="triton"):
    """Values and gradients (w.r.t. x, p, mu, sigma) of our loss; layouts are kept."""
    leaves = _leaves(x, p, mu, sigma)
    loss, rec, kl = beta_vae_loss(*leaves, beta=beta, dist=dist, backend=backend)
    grads = torch.autograd.grad(loss, leaves)
    return (loss, rec, kl), grads


def run_reference(x, p, mu, sigma, beta, dist):
    leaves = _leaves(*(t.double().cpu() for t in (x, p, mu, sigma)))
    loss, rec, kl = reference_beta_vae_loss(*leaves, beta, dist)
    grads = torch.autograd.grad(loss, leaves)
    return (loss, rec, kl), grads


def assert_matches_reference(x, p, mu, sigma, beta, dist):
    """Values, dtypes and all four gradients against the float64 reference, with the
    tolerance policy of ``tests/_helpers.py``; the tensors keep their layouts."""
    values, grads = run_ours(x, p, mu, sigma, beta, dist)
    inputs = LossInputs(dist, x, p, mu, sigma)
    assert_values_match(values, inputs, beta)
    assert_grads_match(grads, inputs, beta)


# ---- layouts ------------------------------------------------------------------------------


def _layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """``t`` (B, C, H, W) with the same values in another memory layout."""
    if kind == "contiguous":
        return t.contiguous()
    if kind == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "transposed":
        return t.transpose(2, 3).contiguous().transpose(2, 3)
    if kind == "sliced":
        wide = torch.full((*t.shape[:-1], 2 * t.shape[-1]), 7.0, dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    raise ValueError(kind)


LAYOUTS = ("contiguous", "channels_last", "transposed", "sliced")


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("p_layout", LAYOUTS)
@pytest.mark.parametrize("x_layout", LAYOUTS)
def test_every_layout_matches_reference(dist, p_layout, x_layout):
    gen = torch.Generator().manual_seed(seed_of(dist, p_layout, x_layout))
    x, p = _data(dist, (3, 2, 5, 7), torch.float32, gen)
    mu, sigma = _posterior((3, 4), torch.float32, gen)
    x, p = _layout(x, x_layout), _layout(p, p_layout)
    assert_matches_reference(x, p, mu, sigma, 1.5, dist)


def test_expanded_data_matches_reference():
    gen = torch.Generator().manual_seed(1)
    x, p = _data("normal", (1, 2, 5, 7), torch.float32, gen)
    x = x.expand(4, 2, 5, 7)
    p = torch.randn(4, 2, 5, 7, generator=gen).to(DEVICE)
    mu, sigma = _posterior((4, 3), torch.float32, gen)
    assert_matches_reference(x, p, mu, sigma, 2.0, "normal")


@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "transposed"])
def test_shared_dense_layout_is_not_copied(kind):
    gen = torch.Generator().manual_seed(2)
    x, p = _data("normal", (2, 3, 4, 5), torch.float32, gen)
    x, p = _layout(x, kind), _layout(p, kind)
    order = reconstruction_order(p, x, per_sample=False)
    p_flat, x_flat = flatten(p, order), flatten(x, order)
    assert p_flat.data_ptr() == p.data_ptr() and x_flat.data_ptr() == x.data_ptr()


def test_gradient_keeps_the_layout_of_p():
    gen = torch.Generator().manual_seed(3)
    x, p = _data("normal", (2, 3, 4, 5), torch.float32, gen)
    x, p = _layout(x, "channels_last"), _layout(p, "channels_last")
    mu, sigma = _posterior((2, 3), torch.float32, gen)
    _, grads = run_ours(x, p, mu, sigma, 1.0, "normal")
    assert grads[1].stride() == p.stride()


@pytest.mark.parametrize("dist", DISTS)
def test_posterior_broadcasting(dist):
    gen = torch.Generator().manual_seed(4)
    x, p = _data(dist, (3, 10), torch.float64, gen)
    mu, _ = _posterior((3, 6), torch.float64, gen)
    for sigma in (torch.tensor(0.7, dtype=torch.float64), torch.rand(1, 6, dtype=torch.float64)):
        assert_matches_reference(x, p, mu, sigma.to(DEVICE) + 0.2, 0.5, dist)


# ---- sizes, dtypes and extreme values -----------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (1, 1025), (2, 4097), (1, 3, 7, 11), (5, 1, 2, 3, 4)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_sizes_not_multiple_of_the_block(shape, dtype):
    gen = torch.Generator().manual_seed(sum(shape))
    for dist in DISTS:
        x, p = _data(dist, shape, dtype, gen)
        mu, sigma = _posterior((shape[0], 5), dtype, gen)
        assert_matches_reference(x, p, mu, sigma, 4.0, dist)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_bernoulli_at_exactly_zero_and_one(dtype):
    values = torch.tensor([0.0, 1.0], dtype=dtype)
    p = values.repeat_interleave(2).repeat(3).view(3, 4).to(DEVICE)
    x = values.repeat(2).repeat(3).view(3, 4).to(DEVICE)
    mu, sigma = _posterior((3, 2), dtype, torch.Generator().manual_seed(5))
    assert_matches_reference(x, p, mu, sigma, 1.0, "bernoulli")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_extreme_posterior_scales(dtype):
    gen = torch.Generator().manual_seed(6)
    x, p = _data("normal", (2, 8), dtype, gen)
    mu = torch.randn(2, 4, generator=gen, dtype=torch.float64).to(DEVICE, dtype)
    sigma = torch.tensor([[1e-6, 1e3, 2e-6, 5e2], [1.0, 1e-6, 1e3, 0.5]], dtype=dtype).to(DEVICE)
    assert_matches_reference(x, p, mu, sigma, 0.25, "normal")


def test_float16_large_errors_keep_gradients_exact():
    # |p − x| = 1e4: the squared error overflows float16 (the reference's dtype gives inf
    # too), but the elementwise math runs in float32, so gradients stay exact.
    p = torch.tensor([[5000.0, -5000.0, 0.5]], dtype=torch.float16, device=DEVICE)
    x = torch.tensor([[-5000.0, 5000.0, 0.25]], dtype=torch.float16, device=DEVICE)
    mu, sigma = _posterior((1, 2), torch.float16, torch.Generator().manual_seed(7))
    (_loss, rec, _), grads = run_ours(x, p, mu, sigma, 1.0, "normal")
    (_, ref_rec, _), ref_grads = run_reference(x, p, mu, sigma, 1.0, "normal")
    assert rec.dtype == torch.float16 and torch.isinf(rec) and ref_rec.to(torch.float16).isinf()
    magnitude = 2 * (p - x).abs().double().cpu()
    assert_close_to_reference(grads[1], ref_grads[1], magnitude, "grad p")
    l1 = reconstruction_loss(p, x, "laplace", "triton")
    assert float(l1) == pytest.approx(20000.25, rel=1e-3)


class LaunchSpy:
    """Wraps the launch callables of the CPU and CUDA operators and records, per kernel
    launch, the kernel's name and its keyword arguments."""

    def __init__(self, monkeypatch) -> None:
        self.launches: list[tuple[str, dict]] = []
        monkeypatch.setattr(cpu_ops, "interpreter_launch", self._wrap(cpu_ops.interpreter_launch))
        monkeypatch.setattr(ops, "wrap_triton", self._wrap(ops.wrap_triton))

    def _wrap(self, launch_fn):
        def spying(kernel):
            launched = launch_fn(kernel)
            name = kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__

            class Grid:
                def __getitem__(_, grid):
                    def run(*args, **kwargs):
                        self.launches.append((name, kwargs))
                        return launched[grid](*args, **kwargs)

                    return run

            return Grid()

        return spying


def test_64_bit_offsets_path(monkeypatch):
    # A tensor over 2^31 elements does not fit a CPU test; lower the threshold instead so
    # the int64-offset variant of every kernel runs, check that it did (a spy on the
    # launches), and check the results against the reference.
    spy = LaunchSpy(monkeypatch)
    gen = torch.Generator().manual_seed(8)
    x, p = _data("bernoulli", (2, 3000), torch.float32, gen)
    mu, sigma = _posterior((2, 3000), torch.float32, gen)
    monkeypatch.setattr(launch, "_INT32_LIMIT", 16)
    assert_matches_reference(x, p, mu, sigma, 3.0, "bernoulli")
    # A factor of 2 runs the backward kernel's int64 path as well.
    leaves = _leaves(x, p, mu, sigma)
    loss, _, _ = beta_vae_loss(*leaves, beta=3.0, dist="bernoulli", backend="triton")
    doubled = torch.autograd.grad(2 * loss, leaves)
    inputs = LossInputs("bernoulli", x, p, mu, sigma)
    assert_grads_match(doubled, inputs, 3.0, weights=(2.0, 0.0, 0.0))
    flags = {}
    for name, kwargs in spy.launches:
        if "INT64" in kwargs:
            flags.setdefault(name, set()).add(kwargs["INT64"])
    assert flags == {
        "_reconstruction_fwd_bwd": {True},
        "_normal_kl_fwd_bwd": {True},
        "_rescale_grad_inplace": {True},
    }, flags


def test_32_bit_offsets_below_the_limit(monkeypatch):
    """The spy sees INT64=False for small tensors (so the test above is not vacuous)."""
    spy = LaunchSpy(monkeypatch)
    gen = torch.Generator().manual_seed(8)
    x, p = _data("normal", (2, 30), torch.float32, gen)
    mu, sigma = _posterior((2, 3), torch.float32, gen)
    leaves = _leaves(x, p, mu, sigma)
    loss, _, _ = beta_vae_loss(*leaves, beta=3.0, dist="normal", backend="triton")
    torch.autograd.grad(2 * loss, leaves)
    assert {kwargs["INT64"] for _, kwargs in spy.launches if "INT64" in kwargs} == {False}


@pytest.mark.gpu
def test_more_than_2_31_elements_on_the_gpu():
    """Past 2^31 elements (float32, 8.6 GB a tensor): the value, and the gradient of the
    last elements, whose offsets overflow 32 bits, land where they belong."""
    n = 2**31 + 2**20
    x = torch.zeros((2, n // 2), dtype=torch.float32, device=DEVICE)
    p = torch.full_like(x, 0.5)
    p[:, -1000:] = 1.0  # a tail that the gradient must show in its own place
    p.requires_grad_()
    mu, sigma = torch.zeros(2, 4, device=DEVICE), torch.ones(2, 4, device=DEVICE)
    _, rec, _ = beta_vae_loss(x, p, mu, sigma, 1.0, "normal", "triton")
    expected = ((n // 2 - 1000) * 0.25 + 1000 * 1.0) * 2 / 2
    assert float(rec) == pytest.approx(expected, rel=1e-6)
    (grad,) = torch.autograd.grad(rec, [p])
    assert torch.equal(grad[:, -1000:], torch.full_like(grad[:, -1000:], 1.0))
    assert torch.equal(grad[:, :1000], torch.full_like(grad[:, :1000], 0.5))


# ---- determinism, poisoned outputs, gradient routing --------------------------------------


@pytest.mark.parametrize("dist", DISTS)
def test_bitwise_deterministic(dist):
    gen = torch.Generator().manual_seed(9)
    x, p = _data(dist, (3, 5000), torch.float32, gen)
    mu, sigma = _posterior((3, 64), torch.float32, gen)
    first_values, first_grads = run_ours(x, p, mu, sigma, 2.0, dist)
    for _ in range(2):
        values, grads = run_ours(x, p, mu, sigma, 2.0, dist)
        for a, b in zip(first_values + first_grads, values + grads, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("with_grad", [True, False])
def test_every_output_element_is_written(dist, with_grad):
    """The forward's launches, on outputs that start as NaN (``poison``), leave none: the
    kernels write every element of the terms and of each gradient (the gap between the
    aligned parts of dL/dp and dL/dx included); rescaling the gradients by an incoming 3
    (the backward kernel's write path) keeps them finite."""
    gen = torch.Generator().manual_seed(10)
    x, p = _data(dist, (2, 3, 1100), torch.float32, gen)
    mu, sigma = _posterior((2, 7), torch.float32, gen)
    leaves = _leaves(x, p, mu, sigma) if with_grad else [x, p, mu, sigma]
    kind, _ = check_loss_inputs(*leaves, dist=dist, validate_args=False)
    call = loss_call(*leaves, beta=1.0, dist=kind)
    out = launch.launch_loss_fwd(interpreter_launch, call, poison=True)
    assert (out.rec_grads.numel() > 0) == with_grad
    if with_grad:
        three = torch.full((), 3.0, device=DEVICE)
        launch.launch_rescale_grad_(interpreter_launch, out.rec_grads, three, None, 1.0)
        launch.launch_rescale_grad_(interpreter_launch, out.kl_grads, three, None, 1.0)
    for name, t in out._asdict().items():
        assert torch.isfinite(t).all(), name


def test_incoming_gradients_are_routed_to_each_term():
    gen = torch.Generator().manual_seed(11)
    x, p = _data("normal", (3, 40), torch.float64, gen)
    mu, sigma = _posterior((3, 5), torch.float64, gen)
    beta = 0.3
    leaves = _leaves(x, p, mu, sigma)
    loss, rec, kl = beta_vae_loss(*leaves, beta=beta, dist="normal", backend="triton")
    weights = (0.5, 2.0, -5.0)  # (loss, rec, kl)
    grads = torch.autograd.grad(0.5 * loss + 2.0 * rec - 5.0 * kl, leaves)
    assert_grads_match(grads, LossInputs("normal", x, p, mu, sigma), beta, weights)
    # Only the reconstruction term: no gradient reaches the posterior.
    leaves = _leaves(x, p, mu, sigma)
    _, rec, _ = beta_vae_loss(*leaves, beta=beta, dist="normal", backend="triton")
    g_mu, g_sigma = torch.autograd.grad(rec, leaves[2:], allow_unused=True, materialize_grads=True)
    assert not g_mu.any() and not g_sigma.any()


def test_reconstruction_and_kl_alone():
    gen = torch.Generator().manual_seed(12)
    x, p = _data("laplace", (2, 30), torch.float64, gen)
    mu, sigma = _posterior((2, 5), torch.float64, gen)
    (_, ref_rec, ref_kl), _ = run_reference(x, p, mu, sigma, 1.0, "laplace")
    _, rec_size, kl_size = value_magnitudes(LossInputs("laplace", x, p, mu, sigma), 1.0)
    rec = reconstruction_loss(p, x, "laplace", "triton")
    assert_close_to_reference(rec, ref_rec, rec_size, "rec_loss")
    assert_close_to_reference(kl_normal_loss(mu, sigma, "triton"), ref_kl, kl_size, "kl_loss")


def test_backward_twice_is_refused_clearly():
    gen = torch.Generator().manual_seed(13)
    x, p = _data("normal", (2, 8), torch.float32, gen)
    mu, sigma = _posterior((2, 3), torch.float32, gen)
    loss, _, _ = beta_vae_loss(x, *_leaves(p, mu, sigma), backend="triton")
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()


def test_launch_counts(monkeypatch):
    # The README's "Backends": at most 3 launches forward and 2 backward.
    spy = LaunchSpy(monkeypatch)
    launches = spy.launches
    gen = torch.Generator().manual_seed(14)
    x, p = _data("bernoulli", (4, 3000), torch.float32, gen)
    mu, sigma = _posterior((4, 10), torch.float32, gen)
    leaves = _leaves(x, p, mu, sigma)
    loss, _, _ = beta_vae_loss(*leaves, dist="bernoulli", backend="triton")
    assert len(launches) == 3, launches
    launches.clear()
    (2 * loss).backward()
    assert len(launches) == 2, launches


# ---- property: any layout, dist and dtype --------------------------------------------------


@given(
    dist=st.sampled_from(DISTS),
    dtype=st.sampled_from([torch.float64, torch.float32, torch.float16, torch.bfloat16]),
    shape=st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
    p_layout=st.sampled_from(LAYOUTS),
    x_layout=st.sampled_from(LAYOUTS),
    latent=st.integers(1, 12),
    beta=st.sampled_from([0.0, 0.5, 1.0, 4.0, 250.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_any_layout_matches_reference(
    dist, dtype, shape, p_layout, x_layout, latent, beta, seed
):
    gen = torch.Generator().manual_seed(seed)
    x, p = _data(dist, shape, dtype, gen)
    mu, sigma = _posterior((shape[0], latent), dtype, gen)
    assert_matches_reference(_layout(x, x_layout), _layout(p, p_layout), mu, sigma, beta, dist)


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_mixed_dtypes_are_read_in_place_without_casts(monkeypatch, half):
    """A 16-bit decoder output beside float32 data and posterior (autocast's mix): the
    reconstruction kernel reads p's and x's own storage, and writes p's gradient in p's
    dtype; nothing is cast or copied on the way."""
    spy = LaunchSpy(monkeypatch)
    gen = torch.Generator().manual_seed(40)
    x, p = _data("bernoulli", (3, 2, 7), torch.float32, gen)
    p = p.to(half).requires_grad_()
    mu, sigma = _posterior((3, 4), torch.float32, gen)
    loss, rec, kl = beta_vae_loss(x, p, mu, sigma, 2.0, "bernoulli", "triton")
    assert (loss.dtype, rec.dtype, kl.dtype) == (torch.float32,) * 3
    ((_, kwargs),) = [(n, k) for n, k in spy.launches if n == "_reconstruction_fwd_bwd"]
    assert kwargs["p_ptr"].data_ptr() == p.data_ptr() and kwargs["p_ptr"].dtype == half
    assert kwargs["x_ptr"].data_ptr() == x.data_ptr() and kwargs["x_ptr"].dtype == torch.float32
    assert kwargs["grad_p_ptr"].dtype == half
    (grad,) = torch.autograd.grad(loss, [p])
    assert grad.dtype == half
    inputs = LossInputs("bernoulli", x, p.detach(), mu, sigma)
    _, ref_grads = run_reference(x, p.detach(), mu, sigma, 2.0, "bernoulli")
    magnitude = grad_magnitudes(inputs, 2.0, (1.0, 0.0, 0.0))[1]
    assert_close_to_reference(grad, ref_grads[1], magnitude, "grad p")


def test_both_data_gradients_start_16_byte_aligned(monkeypatch):
    """105 elements (not a multiple of 16) with the gradients of both p and x: the second
    part of the flat buffer starts at element 112, so the kernel's stores of both may be
    128-bit; the values are the reference's all the same (the KL's parts, 15 latents here,
    are packed: see ``_call.grad_parts``)."""
    spy = LaunchSpy(monkeypatch)
    gen = torch.Generator().manual_seed(41)
    x, p = _data("normal", (3, 5, 7), torch.float32, gen)
    mu, sigma = _posterior((3, 5), torch.float32, gen)
    assert_matches_reference(x, p, mu, sigma, 1.5, "normal")
    ((_, kwargs),) = [(n, k) for n, k in spy.launches if n == "_reconstruction_fwd_bwd"]
    for arg in ("grad_p_ptr", "grad_x_ptr"):
        assert kwargs[arg].data_ptr() % 16 == 0, (arg, kwargs[arg].storage_offset())
    assert kwargs["grad_x_ptr"].storage_offset() == 112


def test_launches_plan_with_what_the_compiled_kernel_allows():
    """On a GPU, a kernel that ran reports its registers and shared memory; the next
    launch of it plans no more programs per SM than an SM holds of it (here: 96 registers
    a thread, 8 warps: 2 blocks on an H100, where the table says 4). The measurements are
    the process's cache (``_device.RESIDENT``, filled as kernels run, not a setting): the
    test measures a kernel name of its own and takes its entry out again."""

    class Compiled:
        n_regs = 96
        metadata = type("Metadata", (), {"shared": 0, "num_warps": 8})()

    cuda = device.GPU(132, device.H100_SM, 0)  # what device.gpu_of(cuda:0) reads off an H100
    key, other = ("test-measured-kernel",), ("test-unmeasured-kernel",)
    assert device.resident_blocks(96, 0, 8, device.H100_SM) == 2
    assert launch.reduction_config(10**8, 4, cuda, key)[2] == 4 * 132
    try:
        device.note_compiled(Compiled(), cuda, (4, *key))
        assert launch.reduction_config(10**8, 4, cuda, key)[2] == 2 * 132
        assert launch.reduction_config(10**8, 4, cuda, other)[2] == 4 * 132
    finally:
        device.RESIDENT.pop((cuda.index, 4, *key), None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_views_at_odd_offsets_keep_working(dtype):
    """p and x as dense views one element into larger buffers (not 16-byte aligned): the
    kernels take them as they are (on a GPU, a specialization without 128-bit access) and
    the results are the reference's."""
    gen = torch.Generator().manual_seed(42)
    shape = (3, 2, 5, 7)
    n = 3 * 2 * 5 * 7
    x_big, p_big = _data("normal", (n + 3,), dtype, gen)
    x, p = x_big[1 : n + 1].view(shape), p_big[3 : n + 3].view(shape)
    assert x.storage_offset() == 1 and p.storage_offset() == 3
    mu, sigma = _posterior((3, 4), dtype, gen)
    assert_matches_reference(x, p, mu, sigma, 1.5, "normal")
