"""The package's main use, measured as a user meets it: a ``torch.compile``d VAE training
step on ``DEVICE`` (on a CPU the Triton backend's kernels run under the interpreter; on a
GPU the same operators run compiled), with a β warm-up, autocast, gradient accumulation
and a loss scale; and what inductor generates for the backward of a step whose decoder
ends in a transposed convolution.
"""

from __future__ import annotations

import re

import pytest
import torch
from _helpers import DEVICE
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch._inductor.utils import run_and_get_code
from torch.distributions import Bernoulli, Normal

from betavae_triton import BetaVAELoss, beta_vae_loss

BACKENDS = ("eager", "triton")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class TinyVAE(nn.Module):
    """8×8 images, a conv encoder to a 4-d posterior, a transposed-conv decoder (logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 8, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(128, 8)
        )
        self.decoder = nn.Sequential(
            nn.Linear(4, 128), nn.ReLU(), nn.Unflatten(1, (8, 4, 4)),
            nn.ConvTranspose2d(8, 1, 4, stride=2, padding=1),
        )  # fmt: skip

    def forward(self, x, eps):
        mu, raw = self.encoder(x).chunk(2, dim=1)
        sigma = nn.functional.softplus(raw) + 1e-3
        return self.decoder(mu + sigma * eps), mu, sigma


STEPS, MICRO, LOSS_SCALE, LR = 10, 2, 1024.0, 0.05


def _train(backend: str, compiled: bool):
    """Ten optimizer steps: β warm-up set as ``loss_fn.beta`` every step, bfloat16
    autocast, two micro-batches accumulated, a constant loss scale (as a GradScaler
    applies) undone before the SGD step. Returns the parameters, Σ over steps of each
    parameter tensor's largest gradient, and the compile count."""
    torch.manual_seed(0)
    model = TinyVAE().to(DEVICE)
    loss_fn = BetaVAELoss(0.0, "bernoulli", backend=backend, validate_args=False)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(1)
    data = (torch.rand(STEPS * MICRO, 6, 1, 8, 8, generator=gen) > 0.6).float().to(DEVICE)
    noise = torch.randn(STEPS * MICRO, 6, 4, generator=gen).to(DEVICE)

    def loss_step(x, eps):
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            logits, mu, sigma = model(x, eps)
        out = loss_fn(x, Bernoulli(logits=logits), Normal(mu, sigma))
        return out["loss"]

    counter = CompileCounterWithBackend("inductor")
    step_fn = torch.compile(loss_step, backend=counter, fullgraph=True) if compiled else loss_step
    grad_sums = [torch.zeros((), device=DEVICE) for _ in model.parameters()]
    for step in range(STEPS):
        loss_fn.beta = 4.0 * min(1.0, (step + 1) / STEPS)  # the warm-up: a new β each step
        opt.zero_grad(set_to_none=True)
        for micro in range(MICRO):
            i = step * MICRO + micro
            loss = step_fn(data[i], noise[i])
            (loss * LOSS_SCALE / MICRO).backward()
        for param, grad_sum in zip(model.parameters(), grad_sums, strict=True):
            param.grad /= LOSS_SCALE
            grad_sum += param.grad.abs().max()
        opt.step()
    return [p.detach().clone() for p in model.parameters()], grad_sums, counter.frame_count


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_training_matches_the_eager_loop(backend):
    """The compiled loop (either backend) ends where the uncompiled loop on the eager
    backend ends, with at most two compiles for ten values of β.

    Tolerance: under autocast the decoder output is bfloat16, and inductor computes the
    fused layers in float32 where eager rounds each op to bfloat16, so each gradient
    element may differ by bfloat16 roundings (2^-8 relative each) of the terms that make
    it, which the largest gradient of its tensor bounds: up to eight on the way (the
    decoder's output and its gradient, the transposed convolution's input and gradient,
    the encoder's and the decoder's linear layers). SGD moves a parameter by
    lr · Σ_steps grad, so the two runs may differ by lr · 8·2^-8 · Σ_steps max|grad| of
    the tensor (from the eager run), plus float32 rounding. A wrong β, accumulation factor
    or loss scale moves them by far more (the loop's own movement is checked to be)."""
    ref_params, grad_sums, _ = _train("eager", compiled=False)
    params, _, frames = _train(backend, compiled=True)
    assert frames <= 2, frames
    torch.manual_seed(0)
    initial = [p.detach() for p in TinyVAE().to(DEVICE).parameters()]
    for got, want, start, grad_sum in zip(params, ref_params, initial, grad_sums, strict=True):
        bound = LR * 8 * 2**-8 * grad_sum + 1e-6
        assert ((want - start).abs() > bound).any(), "the loop must train beyond the tolerance"
        assert ((got - want).abs() <= bound).all(), float(((got - want).abs() / bound).max())


# ---- what inductor generates for the backward --------------------------------------------

_SIZED = re.compile(
    r"(\w+) = (?:empty_strided_\w+|reinterpret_tensor)\((?:\w+, )?\(([\d, ]*)\)"
    r"|assert_size_stride\((\w+), \(([\d, ]*)\)"
)
_CALL = re.compile(r"^\s*(\w+?)(?:\.run)?\(([^()]*(?:\([^()]*\)[^()]*)*)\)\s*$", re.M)
_OURS = ("_reconstruction", "_normal_kl", "_finalize", "_rescale")


def kernels_over(code: str, n: int) -> list[str]:
    """The generated kernels of one compiled graph's ``call`` that take a buffer of at
    least ``n`` elements (extern calls such as the convolution's, and ours, left out)."""
    body = code[code.index("def call(") :]
    sizes: dict[str, int] = {}
    for match in _SIZED.finditer(body):
        name = match.group(1) or match.group(3)
        dims = [int(d) for d in (match.group(2) or match.group(4) or "").split(",") if d.strip()]
        sizes[name] = max(sizes.get(name, 0), int(torch.tensor(dims).prod()) if dims else 1)
    found = []
    for match in _CALL.finditer(body):
        kernel = match.group(1)
        if not (kernel.startswith(("cpp_", "triton_")) or kernel.startswith(_OURS)):
            continue
        if kernel.startswith(_OURS):
            continue
        args = re.findall(r"\b(\w+)\b", match.group(2))
        if any(sizes.get(arg, 0) >= n for arg in args):
            found.append(kernel)
    return found


def test_compiled_backward_moves_at_most_the_incoming_factor_once():
    """A compiled step whose decoder ends in a transposed convolution (nothing may fuse
    with the gradient there), channels-last so that the convolution needs no layout copy.

    Forward: no generated kernel touches the N data elements (the operator reads p where
    the convolution wrote it). Backward: at most one generated kernel does, the
    multiplication by the incoming factor (read N, write N), and no clone or copy of the
    saved gradient. Zero is not reachable in torch 2.13: inductor clones a saved tensor
    that a custom operator mutates in the backward (its re-inplacing pass mutates a graph
    input only when a ``copy_`` epilogue follows, which AOTAutograd emits for forward
    inputs only), so the in-place rescaling of eager mode would cost the same pass as a
    clone onto itself. The README ("What the compiled backward costs") has the details."""
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(4, 3, 3).to(DEVICE, memory_format=torch.channels_last)
    z = torch.randn(2, 4, 30, 30, device=DEVICE).contiguous(memory_format=torch.channels_last)
    # x in p's layout (channels last) too: the kernels then read both where they lie.
    x = torch.randn(2, 3, 32, 32, device=DEVICE).contiguous(memory_format=torch.channels_last)
    mu = torch.randn(2, 5, device=DEVICE, requires_grad=True)
    sigma = (torch.rand(2, 5, device=DEVICE) + 0.5).requires_grad_()
    n = x.numel()

    def step(z, x, mu, sigma):
        loss, _, _ = beta_vae_loss(x, conv(z), mu, sigma, 4.0, "normal", "triton")
        return loss

    compiled = torch.compile(step, fullgraph=True)

    def run():
        loss = compiled(z, x, mu, sigma)
        loss.backward()
        return loss

    _, (forward, backward) = run_and_get_code(run)
    assert "betavae_triton" in forward
    assert kernels_over(forward, n) == [], kernels_over(forward, n)
    over = kernels_over(backward, n)
    assert len(over) <= 1, over
    # The one pass is the factor's multiplication (dtype casts fused into it), no clone.
    assert all("mul" in k and "clone" not in k for k in over), over


def test_the_code_reader_sees_a_clone():
    """``kernels_over`` finds an N-element kernel where there is one (so the test above
    cannot pass by reading nothing): a compiled ``x.clone() * 2`` of N elements."""
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    _, (code,) = run_and_get_code(torch.compile(lambda t: t * 2 + 1), x)
    assert len(kernels_over(code, x.numel())) == 1
