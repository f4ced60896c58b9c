"""Plain examples of the cases a reader should see, each named for the bug it catches.

Hypothesis covers breadth (``test_properties.py``); these pin the corners that random
draws rarely hit: exact ties, a posterior shared by the batch under ``reduction="none"``,
NaN confined to its sample, float16 sums past 65504, confident logits, and the float16
gradient limit of the Triton backend. Every value is compared with ``reference/`` in
float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import (
    DEVICE,
    DISTS,
    LossInputs,
    assert_grads_match,
    assert_values_match,
    check_against_reference,
)

from betavae_triton import beta_vae_loss, reconstruction_loss
from reference import reference_beta_vae_loss, reference_reconstruction_loss

BACKENDS = pytest.mark.parametrize("backend", ["eager", "triton"])


def _leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_() for t in tensors]


def _posterior(batch: int, latent: int, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    loc = torch.randn(batch, latent, generator=gen, dtype=torch.float64)
    scale = torch.rand(batch, latent, generator=gen, dtype=torch.float64) + 0.3
    return loc.to(DEVICE, dtype), scale.to(DEVICE, dtype)


@BACKENDS
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_l1_subgradient_is_zero_at_ties(backend, dtype, reduction):
    """PyTorch's convention: d|p − x|/dp = 0 where p == x exactly (half the elements)."""
    gen = torch.Generator().manual_seed(21)
    x = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    p = torch.where(torch.arange(60).view(3, 4, 5) % 2 == 0, x, x + 0.5)
    x, p = x.to(DEVICE, dtype), p.to(DEVICE, dtype)
    loc, scale = _posterior(3, 2, dtype, 22)
    leaves = _leaves(x, p, loc, scale)
    loss, *_ = beta_vae_loss(*leaves, 1.0, "laplace", backend, reduction=reduction)
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=dtype, device=DEVICE)
    grads = torch.autograd.grad((loss * (weights if reduction == "none" else 1)).sum(), leaves)
    ties = (p == x).cpu()
    assert ties.sum() == 30
    assert not grads[0].cpu()[ties].any() and not grads[1].cpu()[ties].any()
    ref_leaves = _leaves(*(t.cpu().double() for t in (x, p, loc, scale)))
    ref_loss, *_ = reference_beta_vae_loss(*ref_leaves, 1.0, "laplace", reduction=reduction)
    w = weights.cpu().double() if reduction == "none" else 1
    ref_grads = torch.autograd.grad((ref_loss * w).sum(), ref_leaves)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.cpu().double(), want, rtol=1e-6, atol=1e-7)


@BACKENDS
@pytest.mark.parametrize("dist", DISTS)
def test_per_sample_losses_with_a_posterior_shared_by_the_batch(backend, dist):
    """reduction="none" with q of batch 1 beside B = 3 samples: each sample's loss adds the
    one KL, and the posterior's gradient sums the per-sample factors (not their mean)."""
    gen = torch.Generator().manual_seed(23)
    x = torch.rand(3, 7, generator=gen, dtype=torch.float64)
    p = torch.rand(3, 7, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    if dist == "bernoulli":
        x = x.round()
    loc, scale = _posterior(1, 4, torch.float64, 24)
    tensors = (x.to(DEVICE), p.to(DEVICE), loc, scale)
    weights = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)
    leaves = _leaves(*tensors)
    loss, rec, kl = beta_vae_loss(*leaves, 1.5, dist, backend, reduction="none")
    assert loss.shape == rec.shape == (3,) and kl.shape == (1,)
    grads = torch.autograd.grad((loss * weights.to(DEVICE)).sum(), leaves)
    ref_leaves = _leaves(*(t.cpu() for t in tensors))
    ref = reference_beta_vae_loss(*ref_leaves, 1.5, dist, reduction="none")
    for got, want in zip((loss, rec, kl), ref, strict=True):
        torch.testing.assert_close(got.cpu(), want.detach(), rtol=1e-10, atol=1e-12)
    ref_grads = torch.autograd.grad((ref[0] * weights).sum(), ref_leaves)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-10, atol=1e-12)


@BACKENDS
@pytest.mark.parametrize("dist", DISTS)
def test_nan_stays_in_its_own_sample(backend, dist):
    """reduction="none": a NaN in sample 1's data makes sample 1's terms and gradient NaN,
    and leaves every other sample's values and gradients as the reference's."""
    gen = torch.Generator().manual_seed(25)
    x = torch.rand(4, 2, 9, generator=gen, dtype=torch.float64)
    p = torch.rand(4, 2, 9, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    if dist == "bernoulli":
        x = x.round()
    x[1, 1, 4] = float("nan")
    loc, scale = _posterior(4, 3, torch.float64, 26)
    tensors = (x.to(DEVICE), p.to(DEVICE), loc, scale)
    leaves = _leaves(*tensors)
    loss, rec, kl = beta_vae_loss(
        *leaves, 2.0, dist, backend, reduction="none", validate_args=False
    )
    assert torch.isnan(rec[1]) and torch.isnan(loss[1]) and torch.isfinite(kl).all()
    (grad_p,) = torch.autograd.grad(loss.sum(), [leaves[1]])
    # The other samples, on their own, through the reference (whose bernoulli refuses NaN).
    others = [0, 2, 3]
    ref_leaves = _leaves(*(t.cpu()[others] for t in tensors))
    ref = reference_beta_vae_loss(*ref_leaves, 2.0, dist, reduction="none")
    (ref_grad_p,) = torch.autograd.grad(ref[0].sum(), [ref_leaves[1]])
    for got, want in zip((loss, rec, kl), ref, strict=True):
        torch.testing.assert_close(got.cpu()[others], want.detach(), rtol=1e-10, atol=0.0)
    torch.testing.assert_close(grad_p.cpu()[others], ref_grad_p, rtol=1e-10, atol=0.0)


@BACKENDS
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_float16_sum_beyond_65504_with_a_mean_within(backend, reduction):
    """8 images whose squared errors sum to 40000 each: the batch total, 320000, overflows
    float16 while the result, 40000, does not. A float16 accumulation would give inf."""
    x = torch.zeros(8, 10000, dtype=torch.float16, device=DEVICE)
    p = torch.full_like(x, 2.0)
    rec = reconstruction_loss(p, x, "normal", backend, reduction=reduction)
    assert rec.dtype == torch.float16
    assert torch.equal(rec.cpu(), torch.full_like(rec.cpu(), 40000.0))


# Confident logits: where σ(l) rounds to 0 or 1 in float32 and the naive formula loses the
# tail log1p(e^−|l|) (l = −15, x = 0: 3.1e-7, not 0).
CONFIDENT_LOGITS = [-100.0, -30.0, -15.0, -10.0, -6.55, 6.55, 10.0, 15.0, 30.0, 100.0]


@BACKENDS
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_confident_logits_are_exact_in_float32(backend, reduction):
    """Each sample one logit: the per-sample loss (with "mean": a batch of that one
    sample) is the element's cross-entropy, within a few float32 roundings of its own value
    (not of a larger magnitude), and so is its gradient σ(l) − x."""
    logits = torch.tensor(CONFIDENT_LOGITS * 3, dtype=torch.float32).view(-1, 1)
    x = torch.tensor([0.0, 1.0, 0.25], dtype=torch.float32).repeat_interleave(10).view(-1, 1)
    lg = logits.to(DEVICE).requires_grad_()
    if reduction == "none":
        loss = reconstruction_loss(
            lg, x.to(DEVICE), "bernoulli", backend, p_is_logits=True, reduction="none"
        )
    else:
        rows = zip(lg.split(1), x.to(DEVICE).split(1), strict=True)
        loss = torch.stack(
            [reconstruction_loss(li, xi, "bernoulli", backend, p_is_logits=True) for li, xi in rows]
        )
    (grad,) = torch.autograd.grad(loss.sum(), [lg])
    # The exact float64 values, written out (torch's own Bernoulli.log_prob cancels
    # (30 + 9.4e-14) − 30 in float64 and is 1 % off at l = 30; the reference does not).
    lg64, x64 = logits.double(), x.double()
    want_loss = lg64.clamp_min(0) - x64 * lg64 + torch.log1p(torch.exp(-lg64.abs()))
    want_grad = (1 - x64) * torch.sigmoid(lg64) - x64 * torch.sigmoid(-lg64)
    eps = torch.finfo(torch.float32).eps
    for name, got, want in (("loss", loss, want_loss.view(-1)), ("grad", grad, want_grad)):
        err = (got.detach().cpu().double().view(-1) - want.view(-1)).abs()
        bound = 4 * eps * want.view(-1).abs() + torch.finfo(torch.float32).tiny
        assert (err <= bound).all(), (name, logits.view(-1)[err > bound], err[err > bound])


def test_float16_gradient_past_65504_before_its_factor_is_inf_on_the_triton_backend() -> None:
    """The documented limit (README, "Half precision"): the Triton backend stores each
    float16 per-element derivative in float16 during the forward pass, before the backward
    pass multiplies it by the incoming factor. A derivative beyond 65504 is then ±inf even
    where factor · derivative fits (here (p − x)/(p(1 − p)) = −1.1e5 times 0.5): the
    eager backend (and the reference) give the finite −5.5e4. bfloat16 has float32's range."""
    p = torch.tensor([[3.2e-6, 0.5]], dtype=torch.float16, device=DEVICE)
    x = torch.tensor([[0.35, 0.5]], dtype=torch.float16, device=DEVICE)
    grads = {}
    for backend in ("eager", "triton"):
        leaf = p.clone().requires_grad_()
        rec = reconstruction_loss(leaf, x, "bernoulli", backend, reduction="none")
        (grads[backend],) = torch.autograd.grad(0.5 * rec.sum(), [leaf])
    ref_p = p.cpu().double().requires_grad_()
    ref = reference_reconstruction_loss(ref_p, x.cpu().double(), "bernoulli", reduction="none")
    (ref_grad,) = torch.autograd.grad(0.5 * ref.sum(), [ref_p])
    expected = ref_grad.to(torch.float16)
    assert torch.isfinite(expected).all() and float(expected[0, 0]) < -5e4
    torch.testing.assert_close(grads["eager"].cpu(), expected, rtol=2e-3, atol=0.0)
    assert float(grads["triton"][0, 0]) == float("-inf")
    torch.testing.assert_close(grads["triton"].cpu()[0, 1], expected[0, 1])
    bf16 = p.to(torch.bfloat16).requires_grad_()
    rec = reconstruction_loss(bf16, x.to(torch.bfloat16), "bernoulli", "triton", reduction="none")
    (grad_bf16,) = torch.autograd.grad(0.5 * rec.sum(), [bf16])
    assert torch.isfinite(grad_bf16).all()


@BACKENDS
@pytest.mark.parametrize("dist", DISTS)
def test_helpers_check_a_layout_example(backend, dist):
    """One batch-inner data layout with reduction="mean" through the shared checks (the
    property strategies draw every layout; this one runs in every CI)."""
    gen = torch.Generator().manual_seed(27)
    x = torch.rand(3, 5, 6, generator=gen, dtype=torch.float64)
    p = torch.rand(3, 5, 6, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    if dist == "bernoulli":
        x = x.round()
    x = x.movedim(0, -1).contiguous().movedim(-1, 0).to(DEVICE)
    p = p.movedim(0, -1).contiguous().movedim(-1, 0).to(DEVICE)
    loc, scale = _posterior(3, 4, torch.float64, 28)
    inputs = LossInputs(
        dist, x, p, loc, scale, layouts=("batch_inner", "batch_inner", "contiguous")
    )
    leaves = inputs.leaves()
    values = beta_vae_loss(*leaves, 2.0, dist, backend)
    assert_values_match(values, inputs, 2.0)
    assert_grads_match(torch.autograd.grad(values[0], leaves), inputs, 2.0)


@BACKENDS
@pytest.mark.parametrize("dist", DISTS)
def test_per_sample_losses_with_the_batch_innermost_in_memory(backend, dist):
    """reduction="none" where the batch is the innermost dimension of p's and x's memory:
    a sample is then no contiguous row, and the kernels must walk a batch-outer copy."""
    gen = torch.Generator().manual_seed(29)
    x = torch.rand(3, 4, 5, generator=gen, dtype=torch.float64)
    p = torch.rand(3, 4, 5, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    if dist == "bernoulli":
        x = x.round()
    x, p = (t.movedim(0, -1).contiguous().movedim(-1, 0).to(DEVICE) for t in (x, p))
    assert p.stride(0) == 1
    loc, scale = _posterior(3, 2, torch.float64, 30)
    leaves = [x, p.detach().requires_grad_(), loc, scale]
    loss, rec, _ = beta_vae_loss(*leaves, 0.5, dist, backend, reduction="none")
    weights = torch.tensor([1.0, -3.0, 0.5], dtype=torch.float64)
    (grad_p,) = torch.autograd.grad((loss * weights.to(DEVICE)).sum(), [leaves[1]])
    ref_p = p.cpu().clone().requires_grad_()
    ref = reference_beta_vae_loss(
        x.cpu(), ref_p, loc.cpu(), scale.cpu(), 0.5, dist, reduction="none"
    )
    (ref_grad,) = torch.autograd.grad((ref[0] * weights).sum(), [ref_p])
    torch.testing.assert_close(rec.cpu(), ref[1].detach(), rtol=1e-10, atol=0.0)
    torch.testing.assert_close(grad_p.cpu(), ref_grad, rtol=1e-10, atol=1e-14)


@BACKENDS
@pytest.mark.parametrize("dist", ["normal", "laplace"])
def test_per_element_decoder_scale_follows_the_memory_order_of_p(backend, dist):
    """A per-element decoder scale beside channels-last p and x: element i of the scale
    must meet element i of p, whatever order memory holds them in."""
    gen = torch.Generator().manual_seed(35)
    x, p = (torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64) for _ in range(2))
    s = torch.rand(2, 3, 4, 5, generator=gen, dtype=torch.float64) + 0.5
    x, p = (t.to(DEVICE).contiguous(memory_format=torch.channels_last) for t in (x, p))
    leaves = [x, p.requires_grad_(), s.to(DEVICE).requires_grad_()]
    rec = reconstruction_loss(leaves[1], x, dist, backend, p_scale=leaves[2])
    grads = torch.autograd.grad(rec, leaves[1:])
    ref_leaves = [p.detach().cpu().requires_grad_(), s.clone().requires_grad_()]
    ref = reference_reconstruction_loss(
        ref_leaves[0], x.cpu(), dist, reduction="mean", p_scale=ref_leaves[1]
    )
    ref_grads = torch.autograd.grad(ref, ref_leaves)
    torch.testing.assert_close(rec.cpu(), ref.detach(), rtol=1e-10, atol=0.0)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-10, atol=1e-14)


@BACKENDS
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(backend, dtype):
    """8 × 25600 elements, 50 tiles for each lane of the interpreted kernel: a sum kept in
    the 16-bit dtype drifts by percents; a float32 one is exact to the result's rounding."""
    x = torch.zeros(8, 25600, dtype=dtype, device=DEVICE)
    p = torch.full_like(x, 0.1)
    rec = reconstruction_loss(p, x, "normal", backend)
    step = float(p[0, 0]) ** 2  # the squared error of one element, exactly
    expected = torch.tensor(25600 * step, dtype=torch.float64).to(dtype)
    assert torch.equal(rec.cpu(), expected), (float(rec), float(expected))


def test_fuzz_found_float16_limit_example():
    """The input ``make fuzz`` found (test_per_sample_losses_match_reference, float16,
    reduction="none", sample weight 0.5): two derivatives past 65504 (p = 9.5e-7 and
    3.2e-6) are ±inf on the Triton backend, every other element is the reference's."""
    x = torch.tensor(
        [[[0.9702, 0.7080, 0.4595, 0.9209, 0.6450], [0.7910, 0.1786, 0.3511, 0.5815, 0.2883]]],
        dtype=torch.float16,
    )
    p = torch.tensor(
        [[[1.7691e-03, 9.5367e-07, 2.5368e-04, 2.2369e-02, 2.9068e-03],
          [1.4257e-03, 7.5722e-04, 3.1590e-06, 3.8269e-02, 1.4404e-01]]],
        dtype=torch.float16,
    )  # fmt: skip
    leaf = p.to(DEVICE).requires_grad_()
    rec = reconstruction_loss(leaf, x.to(DEVICE), "bernoulli", "triton", reduction="none")
    (grad,) = torch.autograd.grad(0.5 * rec.sum(), [leaf])
    ref_p = p.double().requires_grad_()
    ref = reference_reconstruction_loss(ref_p, x.double(), "bernoulli", reduction="none")
    (ref_grad,) = torch.autograd.grad(0.5 * ref.sum(), [ref_p])
    beyond = (2 * ref_grad).abs() > 65504
    assert beyond.sum() == 2
    assert torch.isinf(grad.cpu()[beyond]).all() and (grad.cpu()[beyond] < 0).all()
    expected = ref_grad[~beyond].to(torch.float16).double()
    got = grad.cpu()[~beyond].double()
    assert ((got - expected).abs() <= 2e-3 * expected.abs()).all()


@BACKENDS
def test_fuzz_found_float16_subnormal_kl_gradient(backend):
    """The second input ``make fuzz`` found (test_logits_and_logvar_match_reference,
    float16): μ = −4.9e-6 shared by a posterior batch of 2, so μ/Bq is subnormal in
    float16 when the Triton backend stores it, and the factor 3 and the sum over the two
    rows multiply that rounding; the tolerance's floor scales with them (``_helpers``)."""
    inputs = LossInputs(
        "bernoulli",
        torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0]], dtype=torch.float16, device=DEVICE),
        torch.tensor([[-0.6284, -0.4417, -0.7397, 1.6465, -0.1334]], dtype=torch.float16,
                     device=DEVICE),
        torch.tensor([[1.2760e-03, 3.7813e-04, -1.2150e-03, -1.3757e-04, 1.2398e-03,
                       6.1655e-04, -4.9472e-06]], dtype=torch.float16, device=DEVICE),
        torch.tensor([[0.9990, 0.9990, 1.0000, 1.0010, 1.0010, 1.0020, 0.9995],
                      [0.9990, 0.9990, 1.0000, 1.0029, 0.9995, 0.9990, 1.0010]],
                     dtype=torch.float16, device=DEVICE),
        p_is_logits=True,
    )  # fmt: skip
    check_against_reference(inputs, 0.0, backend, "functional", (0.5, -2.0, 3.0))


@BACKENDS
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_bernoulli_cross_entropy_near_certainty_is_not_cancelled(backend, dtype):
    """x = 1 and p = 1 − ε (and x = 0, p = ε): the loss is −log(1 − ε) ≈ ε, which the form
    log(1 − p) + x·(log p − log(1 − p)) loses next to log(1 − p) ≈ −36.7 (found by
    ``make fuzz`` in float64: 0 instead of 1.1e-16)."""
    eps = torch.finfo(dtype).eps / 2
    p = torch.tensor([[1 - eps], [eps]], dtype=dtype, device=DEVICE)
    x = torch.tensor([[1.0], [0.0]], dtype=dtype, device=DEVICE)
    rec = reconstruction_loss(p, x, "bernoulli", backend, reduction="none")
    want = reference_reconstruction_loss(p.cpu().double(), x.cpu().double(), "bernoulli",
                                         reduction="none")  # fmt: skip
    assert float(want[0]) > 0
    torch.testing.assert_close(rec.cpu().double(), want.to(dtype).double(), rtol=4 * eps, atol=0.0)


@BACKENDS
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fuzz_found_float64_logit_tail_is_not_cancelled(backend, dtype):
    """The input ``make fuzz`` found (test_logits_and_logvar_match_reference, float64):
    logit −29.0464 with x = 0 (and +29.0464 with x = 1). The loss is softplus(−|l|) =
    log1p(e^−29.0464) ≈ 2.428e-13; the reference once took it from torch's
    ``Bernoulli.log_prob``, which forms (1 − x)·l + max(−l, 0) + log1p(…) and cancels to
    2.416e-13. Both the oracle and each backend must give the tail to a few roundings."""
    logits = torch.tensor([[-29.0464], [29.0464], [-29.0464]], dtype=dtype, device=DEVICE)
    x = torch.tensor([[0.0], [1.0], [0.25]], dtype=dtype, device=DEVICE)
    tail = math.log1p(math.exp(-float(logits[1])))  # the logit as stored in dtype
    want = reference_reconstruction_loss(logits.cpu().double(), x.cpu().double(), "bernoulli",
                                         p_is_logits=True, reduction="none")  # fmt: skip
    f64 = torch.finfo(torch.float64).eps
    for got in (float(want[0]), float(want[1])):
        assert abs(got - tail) <= 4 * f64 * tail, (got, tail)
    eps = torch.finfo(dtype).eps
    rec = reconstruction_loss(logits, x, "bernoulli", backend, p_is_logits=True, reduction="none")
    torch.testing.assert_close(rec.cpu().double(), want, rtol=4 * eps, atol=0.0)
