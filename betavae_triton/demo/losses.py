"""The losses of a demo run, the step that computes them, and the KL warm-up's weights.

:func:`make_train_loss` is the loss training follows (:class:`betavae_triton.BetaVAELoss`,
or :class:`betavae_triton.BetaTCVAELoss` with ``--loss btcvae``); :func:`make_loss` the
beta-VAE loss that the evaluation reads the per-latent KL from. :func:`make_loss_step` is
the function :mod:`.train` compiles, ``x -> the loss's dict``. The KL warm-up
(:func:`tensor_weights`, :func:`set_weights`) changes the loss's weights in place, and
:func:`full_weight_row` records each step's losses at the full weights whatever the
warm-up's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.distributions import Bernoulli, Distribution, Laplace, Normal

from betavae_triton import BetaTCVAELoss, BetaVAELoss

from .config import DemoConfig, DistInfo

__all__ = [
    "LOSS_KEYS",
    "TCVAE_KEYS",
    "decoder_distribution",
    "full_weight_row",
    "loss_keys",
    "make_loss",
    "make_loss_step",
    "make_train_loss",
    "set_weights",
    "tensor_weights",
]

LOSS_KEYS = ("loss", "rec_loss", "kl_loss")
# What BetaTCVAELoss adds: the three terms its KL splits into (the KL itself is logged).
TCVAE_KEYS = ("mi_loss", "tc_loss", "dw_kl_loss")


def make_loss(config: DemoConfig, *, kl_per_dim: bool = False) -> BetaVAELoss:
    """The beta-VAE loss: ``config``'s beta and decoder distribution, the automatic backend.
    The training loss of ``--loss betavae``; the evaluation's per-latent KL for both."""
    return BetaVAELoss(
        config.beta, config.dist, backend="auto", validate_args=False, kl_per_dim=kl_per_dim
    )


def make_train_loss(config: DemoConfig, info: DistInfo) -> BetaVAELoss:
    """The loss that training follows: :func:`make_loss`'s, or with ``--loss btcvae`` the
    beta-TCVAE loss (alpha = gamma = 1), N = the training sprites of all ranks, and under
    DDP each rank's samples scored against the posteriors of the global batch; with
    ``config.bank`` a bank of that many posteriors."""
    if config.loss == "betavae":
        return make_loss(config)
    return BetaTCVAELoss(
        alpha=1.0,
        beta=config.beta,
        gamma=1.0,
        dataset_size=config.n_train * info.world_size,
        estimator=config.estimator,
        default_dist=config.dist,
        backend="auto",
        gather=info.distributed,
        validate_args=False,
        bank_size=config.bank,
        latent_dim=config.latent_dim if config.bank else None,
    )


def loss_keys(loss: str) -> tuple[str, ...]:
    """The losses recorded every step: the beta-VAE's three, plus mi, tc and dw_kl."""
    return LOSS_KEYS + TCVAE_KEYS if loss == "btcvae" else LOSS_KEYS


def _weight_names(loss_fn: BetaVAELoss) -> tuple[str, ...]:
    """The loss's weights of its KL terms: beta (and the beta-TCVAE's alpha and gamma)."""
    return ("alpha", "beta", "gamma") if isinstance(loss_fn, BetaTCVAELoss) else ("beta",)


def tensor_weights(loss_fn: BetaVAELoss, device: torch.device) -> None:
    """Turn the loss's weights into 0-d tensors on ``device``, for a KL warm-up to update in
    place: the step is compiled with ``dynamic=False``, under which a number that changes
    recompiles it at every new value (and past Dynamo's cache limit runs it eagerly),
    whereas a tensor's value is an input of the graph."""
    for name in _weight_names(loss_fn):
        setattr(loss_fn, name, torch.tensor(float(getattr(loss_fn, name)), device=device))


def set_weights(loss_fn: BetaVAELoss, beta: float, factor: float) -> None:
    """The KL warm-up's weights for a step: beta (and the beta-TCVAE's alpha = gamma = 1)
    times ``factor``; in place where they are tensors (see :func:`tensor_weights`)."""
    for name in _weight_names(loss_fn):
        value = (beta if name == "beta" else 1.0) * factor
        weight = getattr(loss_fn, name)
        if isinstance(weight, torch.Tensor):
            weight.fill_(value)
        else:
            setattr(loss_fn, name, value)


def full_weight_row(out: dict[str, torch.Tensor], beta: float) -> torch.Tensor:
    """One step's recorded losses (:func:`loss_keys`' order), ``loss`` at the full
    weights whatever the warm-up's of this step."""
    rec, kl = out["rec_loss"].detach().float(), out["kl_loss"].detach().float()
    if "tc_loss" not in out:
        return torch.stack([rec + beta * kl, rec, kl])
    mi, tc, dw_kl = (out[k].detach().float() for k in TCVAE_KEYS)
    return torch.stack([rec + mi + beta * tc + dw_kl, rec, kl, mi, tc, dw_kl])


def decoder_distribution(logits: torch.Tensor, name: str) -> Distribution:
    """Wrap the decoder's logits in the distribution that BetaVAELoss reads.

    Bernoulli takes the logits themselves: the loss computes the cross-entropy from them,
    exactly, without forming the sigmoid. Normal and Laplace take the sigmoid as the mean.
    """
    if name == "bernoulli":
        return Bernoulli(logits=logits, validate_args=False)
    p = torch.sigmoid(logits)
    if name == "normal":
        return Normal(p, torch.ones_like(p), validate_args=False)
    return Laplace(p, torch.ones_like(p), validate_args=False)


def make_loss_step(
    model: torch.nn.Module, loss_fn: BetaVAELoss, dist_name: str
) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """The step to compile: ``x -> the loss's dict``, whose ``loss`` the optimiser
    follows. The beta-TCVAE loss also reads the sample z that the decoder was given. A KL
    warm-up updates the loss's weights, 0-d tensors then, before each call: one compile
    however often they change."""
    tcvae = isinstance(loss_fn, BetaTCVAELoss)

    def loss_step(x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, mu, scale, z = model(x)
        q = Normal(mu, scale, validate_args=False)
        p = decoder_distribution(logits, dist_name)
        return loss_fn(x, p, q, z) if tcvae else loss_fn(x, p, q)

    return loss_step
