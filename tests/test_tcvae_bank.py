"""β-TCVAE with a bank of posteriors: ``bank_loc``/``bank_scale`` of the functions and
``BetaTCVAELoss(bank_size=K)``.

The property the bank's weights are built for: when the batch and the bank hold every
posterior of a data set of N once, log q(z_i) and log q(z_id) are exact,
log (1/N) Σ_n q(z_i | x_n). The exact values below are computed from that definition in
float64 (no estimator, no weights), and every backend — the C kernels, the chunked torch
path, the Triton kernels (interpreted on a CPU), the differentiable formula under
``torch.func`` — must give them to 1e-9, with the float64 oracle's gradients
(``reference/beta_tcvae.py`` with a bank). The ring buffer is checked slot by slot.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch.distributions import Normal

from betavae_triton import BetaTCVAELoss, beta_tcvae_loss, kl_decomposition
from betavae_triton.tcvae import cpu as _tcvae_cpu
from betavae_triton.tcvae.bank import PosteriorBank
from reference.beta_tcvae import log_importance_weights, reference_beta_tcvae_terms

PATHS = pytest.mark.parametrize("path", ["eager-c", "eager-torch", "triton"])


def _data_set(n, latent, seed=0, dtype=torch.float64):
    """N posteriors (μ, σ) and one sample of each."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, latent, generator=gen, dtype=dtype)
    sigma = torch.rand(n, latent, generator=gen, dtype=dtype) * 0.8 + 0.4
    return mu + sigma * torch.randn(n, latent, generator=gen, dtype=dtype), mu, sigma


def _log_normal(z, mu, sigma):
    return -0.5 * math.log(2 * math.pi) - sigma.log() - 0.5 * ((z - mu) / sigma) ** 2


def _exact_terms(z, mu_batch, sigma_batch, mu_data, sigma_data):
    """(mi, tc, dw_kl) with log q(z_i) = log (1/N) Σ_n q(z_i | x_n) over the whole data
    set, by definition; differentiable in the batch's tensors."""
    n = mu_data.shape[0]
    pair = _log_normal(z[:, None, :], mu_data[None], sigma_data[None])  # (B, N, D)
    log_qz = torch.logsumexp(pair.sum(2), 1) - math.log(n)
    log_prod = (torch.logsumexp(pair, 1) - math.log(n)).sum(1)
    log_qz_x = _log_normal(z, mu_batch, sigma_batch).sum(1)
    log_pz = _log_normal(z, torch.zeros_like(z), torch.ones_like(z)).sum(1)
    return torch.stack(
        ((log_qz_x - log_qz).mean(), (log_qz - log_prod).mean(), (log_prod - log_pz).mean())
    )


def _ours(path, monkeypatch):
    backend = "triton" if path == "triton" else "eager"
    if path == "eager-torch":
        monkeypatch.setenv(_tcvae_cpu.ENV_SWITCH, "0")
    return backend


@PATHS
def test_batch_and_bank_holding_the_data_set_give_the_exact_terms(path, monkeypatch):
    """N = 11 posteriors: the batch holds 4 of them (rows 3, 7, 0, 9), the bank the other
    7, in another order; our terms and gradients are the exact ones."""
    backend = _ours(path, monkeypatch)
    z_all, mu, sigma = _data_set(11, 3, seed=1)
    rows = torch.tensor([3, 7, 0, 9])
    others = torch.tensor([10, 1, 5, 2, 8, 4, 6])
    leaves = [t[rows].clone().requires_grad_() for t in (z_all, mu, sigma)]
    bank = (mu[others], sigma[others])
    got = torch.stack(
        kl_decomposition(*leaves, 11, backend=backend, bank_loc=bank[0], bank_scale=bank[1])
    )
    got_grads = torch.autograd.grad(got @ torch.tensor([1.0, 6.0, 0.5]).double(), leaves)

    exact_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    data_mu = torch.cat((exact_leaves[1], bank[0]))
    data_sigma = torch.cat((exact_leaves[2], bank[1]))
    want = _exact_terms(*exact_leaves, data_mu, data_sigma)
    want_grads = torch.autograd.grad(want @ torch.tensor([1.0, 6.0, 0.5]).double(), exact_leaves)
    torch.testing.assert_close(got, want.detach(), rtol=1e-9, atol=1e-9)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)
    oracle = torch.stack(
        reference_beta_tcvae_terms(*leaves, 11, bank_loc=bank[0], bank_scale=bank[1])
    )
    torch.testing.assert_close(oracle, want.detach(), rtol=1e-12, atol=1e-12)


@PATHS
def test_a_partial_bank_matches_the_oracle_and_takes_no_gradient(path, monkeypatch):
    """B = 6, K = 9 of N = 1000 (the bank's posteriors requiring grad, log-variances):
    values and gradients of the float64 oracle; nothing reaches the bank."""
    backend = _ours(path, monkeypatch)
    z, mu, sigma = _data_set(6, 4, seed=2)
    _, bank_mu, bank_sigma = _data_set(9, 4, seed=3)
    logvar, bank_logvar = 2 * sigma.log(), 2 * bank_sigma.log()
    bank = [bank_mu.requires_grad_(), bank_logvar.requires_grad_()]
    leaves = [t.clone().requires_grad_() for t in (z, mu, logvar)]
    got = torch.stack(
        kl_decomposition(
            *leaves, 1000, q_is_logvar=True, backend=backend, bank_loc=bank[0], bank_scale=bank[1]
        )
    )
    weights = torch.tensor([0.5, 6.0, 2.0], dtype=torch.float64)
    (got @ weights).backward()
    assert all(t.grad is None for t in bank)
    oracle_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    want = torch.stack(
        reference_beta_tcvae_terms(*oracle_leaves, 1000, "mss", True, bank[0], bank[1])
    )
    (want @ weights).backward()
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-10, atol=1e-10)
    for g, w in zip(leaves, oracle_leaves, strict=True):
        torch.testing.assert_close(g.grad, w.grad, rtol=1e-9, atol=1e-9)


def test_the_formula_under_torch_func_takes_the_bank_too():
    """``torch.func.grad`` (the differentiable formula's path) gives the exact gradient."""
    z_all, mu, sigma = _data_set(7, 2, seed=4)
    bank = (mu[3:], sigma[3:])

    def tc(z):
        return kl_decomposition(z, mu[:3], sigma[:3], 7, bank_loc=bank[0], bank_scale=bank[1])[1]

    got = torch.func.grad(tc)(z_all[:3])
    z = z_all[:3].clone().requires_grad_()
    (want,) = torch.autograd.grad(_exact_terms(z, mu[:3], sigma[:3], mu, sigma)[1], z)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_the_bank_weights_sum_to_one_and_are_1_over_n_when_the_bank_completes_the_data():
    for batch, bank, n in ((4, 3, 7), (4, 3, 100), (2, 0, 5)):
        w = log_importance_weights(batch, n, "mss", bank).exp()
        torch.testing.assert_close(w.sum(1), torch.ones(batch, dtype=torch.float64))
        if batch + bank == n:
            torch.testing.assert_close(w, torch.full_like(w, 1 / n))


# ---- the module's ring buffer -----------------------------------------------------------


def test_the_ring_buffer_fills_with_copies_then_overwrites_the_oldest_first():
    bank = PosteriorBank(5, 1)
    batches = [torch.tensor([[10.0 * k + i] for i in range(2)]) for k in range(1, 5)]
    expected = [
        [10, 11, 10, 11, 10],  # the first push fills every slot
        [10, 11, 20, 21, 10],
        [31, 11, 20, 21, 30],  # wraps around
        [31, 40, 41, 21, 30],
    ]
    for batch, want in zip(batches, expected, strict=True):
        bank.push(batch, batch + 0.5)
        assert bank.loc.flatten().tolist() == want
        assert bank.scale.flatten().tolist() == [v + 0.5 for v in want]
    assert int(bank.count) == 8 and int(bank.next) == 3
    larger = PosteriorBank(2, 1)
    larger.push(torch.tensor([[1.0], [2.0], [3.0]]), torch.ones(3, 1))
    assert larger.loc.flatten().tolist() == [2.0, 3.0]  # a batch larger than the bank: its last K


def test_a_refresh_overwrites_its_slots_and_leaves_the_ring_as_it_was():
    """Slots 4 and 1 get the newer posteriors; the next push still starts where it would
    have, and overwrites a refreshed slot when its turn comes."""
    bank = PosteriorBank(5, 1)
    bank.push(torch.tensor([[10.0], [11.0]]), torch.full((2, 1), 0.5))
    bank.push(torch.tensor([[20.0], [21.0]]), torch.full((2, 1), 0.5))  # [10 11 20 21 10]
    bank.refresh(torch.tensor([4, 1]), torch.tensor([[14.0], [11.5]]), torch.tensor([[2.0], [3.0]]))
    assert bank.loc.flatten().tolist() == [10, 11.5, 20, 21, 14]
    assert bank.scale.flatten().tolist() == [0.5, 3.0, 0.5, 0.5, 2.0]
    assert (int(bank.next), int(bank.count)) == (4, 4)
    bank.push(torch.tensor([[30.0], [31.0]]), torch.full((2, 1), 0.5))
    assert bank.loc.flatten().tolist() == [31, 11.5, 20, 21, 30]


def test_a_refresh_of_an_empty_bank_or_of_another_shape_is_refused():
    bank = PosteriorBank(4, 2)
    with pytest.raises(RuntimeError, match="push a batch first"):
        bank.refresh(torch.tensor([0]), torch.zeros(1, 2), torch.ones(1, 2))
    bank.push(torch.zeros(2, 2), torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"needs posteriors of shape \(2, 2\)"):
        bank.refresh(torch.tensor([0, 1]), torch.zeros(2, 3), torch.ones(2, 3))


def _module_step(loss_fn, seed):
    z, mu, sigma = _data_set(4, 3, seed=seed, dtype=torch.float32)
    x = torch.rand(4, 5, generator=torch.Generator().manual_seed(seed))
    return loss_fn(x, x.clamp(0.1, 0.9), Normal(mu, sigma), z)["loss"]


def test_the_module_scores_against_its_bank_and_pushes_after():
    """Call 1 has no bank yet (the batch alone, the paper's weights); call 2 scores
    against call 1's posteriors, as the function does given them; eval mode pushes
    nothing."""
    loss_fn = BetaTCVAELoss(dataset_size=100, bank_size=6, latent_dim=3, backend="eager")
    first = _module_step(loss_fn, 0)
    z0, mu0, sigma0 = _data_set(4, 3, seed=0, dtype=torch.float32)
    x0 = torch.rand(4, 5, generator=torch.Generator().manual_seed(0))
    plain = beta_tcvae_loss(x0, x0.clamp(0.1, 0.9), z0, mu0, sigma0, dataset_size=100)[0]
    torch.testing.assert_close(first, plain)
    second = _module_step(loss_fn, 1)
    z1, mu1, sigma1 = _data_set(4, 3, seed=1, dtype=torch.float32)
    x1 = torch.rand(4, 5, generator=torch.Generator().manual_seed(1))
    bank = (mu0.repeat(2, 1)[:6], sigma0.repeat(2, 1)[:6])
    want = beta_tcvae_loss(
        x1,
        x1.clamp(0.1, 0.9),
        z1,
        mu1,
        sigma1,
        dataset_size=100,
        bank_loc=bank[0],
        bank_scale=bank[1],
    )[0]
    torch.testing.assert_close(second, want)
    loss_fn.eval()
    _module_step(loss_fn, 2)
    assert int(loss_fn.bank.count) == 8


def test_a_resumed_module_resumes_its_bank():
    a = BetaTCVAELoss(dataset_size=100, bank_size=6, latent_dim=3)
    for seed in range(3):
        _module_step(a, seed)
    b = BetaTCVAELoss(dataset_size=100, bank_size=6, latent_dim=3)
    b.load_state_dict(a.state_dict())
    assert b.bank.filled and int(b.bank.count) == 12
    torch.testing.assert_close(_module_step(b, 3), _module_step(a, 3), rtol=0, atol=0)
    torch.testing.assert_close(b.bank.loc, a.bank.loc, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_a_compiled_step_with_a_bank_compiles_at_most_twice_over_a_beta_schedule(backend):
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    compiled_fn = BetaTCVAELoss(dataset_size=100, bank_size=6, latent_dim=3, backend=backend)
    eager_fn = BetaTCVAELoss(dataset_size=100, bank_size=6, latent_dim=3, backend=backend)

    def step(loss_fn, beta, seed_inputs):
        loss_fn.beta = beta
        x, p, q, z = seed_inputs
        return loss_fn(x, p, q, z)["loss"]

    compiled = torch.compile(step, backend=counter, fullgraph=True)
    for i in range(5):
        z, mu, sigma = _data_set(4, 3, seed=i, dtype=torch.float32)
        x = torch.rand(4, 5, generator=torch.Generator().manual_seed(i))
        inputs = (x, x.clamp(0.1, 0.9), Normal(mu, sigma), z)
        got = compiled(compiled_fn, 1.0 + i, inputs)
        want = step(eager_fn, 1.0 + i, inputs)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled_fn.bank.loc, eager_fn.bank.loc)
    assert counter.frame_count <= 2, counter.frame_count


# ---- bad input --------------------------------------------------------------------------


def test_bad_banks_are_refused_by_name():
    z, mu, sigma = _data_set(4, 3, seed=5, dtype=torch.float32)
    bank_mu, bank_sigma = _data_set(5, 3, seed=6, dtype=torch.float32)[1:]

    def call(**kwargs):
        args = {"bank_loc": bank_mu, "bank_scale": bank_sigma, **kwargs}
        return kl_decomposition(z, mu, sigma, 100, **args)

    with pytest.raises(ValueError, match="z's D = 3"):
        call(bank_loc=bank_mu[:, :2], bank_scale=bank_sigma[:, :2])
    with pytest.raises(ValueError, match="keep the bank in the batch's dtype"):
        call(bank_loc=bank_mu.double(), bank_scale=bank_sigma.double())
    with pytest.raises(ValueError, match="is on meta"):
        call(bank_loc=bank_mu.to("meta"), bank_scale=bank_sigma.to("meta"))
    with pytest.raises(TypeError, match="go together"):
        call(bank_scale=None)
    with pytest.raises(ValueError, match="at most N − B = 4"):
        kl_decomposition(z, mu, sigma, 8, bank_loc=bank_mu, bank_scale=bank_sigma)
    with pytest.raises(ValueError, match="needs estimator 'mss'"):
        kl_decomposition(z, mu, sigma, 100, "mws", bank_loc=bank_mu, bank_scale=bank_sigma)
    with pytest.raises(ValueError, match="bank_scale must be positive"):
        kl_decomposition(
            z, mu, sigma, 100, bank_loc=bank_mu, bank_scale=-bank_sigma, validate_args=True
        )
    with pytest.raises(ValueError, match="bank_size must be an int ≥ 0"):
        BetaTCVAELoss(dataset_size=100, bank_size=-1, latent_dim=3)
    with pytest.raises(ValueError, match="needs latent_dim"):
        BetaTCVAELoss(dataset_size=100, bank_size=8)
    with pytest.raises(ValueError, match="needs estimator 'mss'"):
        BetaTCVAELoss(dataset_size=100, bank_size=8, latent_dim=3, estimator="mws")
