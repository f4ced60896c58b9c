"""The evaluation of a trained demo model on held-out sprites, and the TC probe.

:func:`evaluate` encodes the held-out sprites (posterior means and scales, the KL of each
latent, the reconstruction loss); :func:`score_latents` turns the means into the MIG and
says which factor each latent holds; :func:`tc_probe` measures the bias of the minibatch
estimate of the total correlation against the estimate over every held-out sprite. All
eager, under ``torch.no_grad``; :mod:`.report` calls them on rank 0.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.distributions import Normal

from betavae_triton import BetaVAELoss, kl_decomposition

from .losses import decoder_distribution
from .mig import entropy, mig
from .model import ConvVAE
from .sprites import FACTOR_NAMES, Sprites

__all__ = ["ACTIVE_KL", "evaluate", "score_latents", "tc_probe"]

# A latent whose KL, averaged over held-out sprites, exceeds this (nats) counts as active.
ACTIVE_KL = 0.1


@torch.no_grad()
def evaluate(
    model: ConvVAE, data: Sprites, loss_fn: BetaVAELoss, dist_name: str, device: torch.device
) -> dict[str, np.ndarray]:
    """Posterior means and the mean KL of each latent over ``data``, in eager mode.

    Parameters
    ----------
    model : ConvVAE
        The trained model, in eval mode.
    data : Sprites
        The held-out sprites.
    loss_fn : BetaVAELoss
        The run's loss, built with ``kl_per_dim=True``.
    dist_name : str
        The decoder distribution (``--dist``).
    device : torch.device
        Where the model lives.

    Returns
    -------
    evaluation : dict of str to numpy.ndarray
        ``"mu"`` and ``"scale"``, the posterior means (what the MIG reads) and standard
        deviations, shape ``(len(data), latent_dim)`` each; ``"kl_per_dim"``, shape
        ``(latent_dim,)``: the loss's batch-mean KL of each latent, averaged over the
        batches weighted by their sizes, i.e. the mean over all of ``data``; and
        ``"rec_loss"``, 0-d: the reconstruction loss per image, averaged likewise. The
        decoder reads the posterior mean (no sampling); the KL does not depend on it.
    """
    mus, scales = [], []
    kl_sum = torch.zeros(model.latent_dim, dtype=torch.float64)
    rec_sum = 0.0
    for start in range(0, len(data), 512):
        x = data.batch(slice(start, start + 512)).to(device)
        mu, scale = model.encode(x)
        p = decoder_distribution(model.decode_logits(mu), dist_name)
        out = loss_fn(x, p, Normal(mu, scale, validate_args=False))
        kl_sum += out["kl_per_dim"].double().cpu() * x.shape[0]
        rec_sum += float(out["rec_loss"]) * x.shape[0]
        mus.append(mu.float().cpu())
        scales.append(scale.float().cpu())
    return {
        "mu": torch.cat(mus).numpy(),
        "scale": torch.cat(scales).numpy(),
        "kl_per_dim": (kl_sum / len(data)).numpy(),
        "rec_loss": np.asarray(rec_sum / len(data)),
    }


def score_latents(mu: np.ndarray, kl_per_dim: np.ndarray, factors: np.ndarray) -> dict:
    """The MIG of the posterior means and what each latent holds.

    Parameters
    ----------
    mu : numpy.ndarray
        The held-out sprites' posterior means, shape ``(N, latent_dim)``.
    kl_per_dim : numpy.ndarray
        Each latent's mean KL (:func:`evaluate`'s).
    factors : numpy.ndarray
        The sprites' ground-truth factors, shape ``(N, len(FACTOR_NAMES))``.

    Returns
    -------
    scores : dict
        ``mig``, ``mig_per_factor`` and ``mutual_information`` (:func:`.mig.mig`'s,
        ``(latent_dim, factors)`` nats), ``factor_entropy`` (nats, per factor) and
        ``notes``: per latent, its best-known factor with the share of that factor's
        entropy it holds, or ``"inactive"`` when its KL is at most :data:`ACTIVE_KL`.
    """
    score, per_factor, mi = mig(mu, factors)
    h = np.array([entropy(factors[:, k]) for k in range(len(FACTOR_NAMES))])
    share = mi / np.where(h > 0, h, 1.0)
    notes = [
        f"{FACTOR_NAMES[k]} {share[j, k]:.2f}" if kl_per_dim[j] > ACTIVE_KL else "inactive"
        for j, k in enumerate(share.argmax(axis=1))
    ]
    return {
        "mig": score,
        "mig_per_factor": per_factor,
        "mutual_information": mi,
        "factor_entropy": h,
        "notes": notes,
    }


@torch.no_grad()
def tc_probe(
    mu: np.ndarray,
    scale: np.ndarray,
    batch_sizes: tuple[int, ...],
    dataset_size: int,
    estimator: str,
    seed: int,
    device: torch.device,
) -> dict:
    """The minibatch estimates of mi, tc and dw_kl at several batch sizes against the
    estimate over the whole evaluation set: the bias of the small-batch estimates.

    One sample ``z ~ q(z|x)`` per held-out sprite (seeded) is scored by
    :func:`betavae_triton.kl_decomposition` against the posteriors of its chunk: for each
    size ``b`` in ``batch_sizes`` (below ``len(mu)``), the chunks of ``b`` consecutive
    sprites (remainder dropped) and the mean of their estimates; and once against all
    ``len(mu)`` posteriors, the large-batch estimate, whose own bias is the smallest.
    float64 on the CPU (cheap there), float32 on CUDA; O(B·D) memory either way.

    Returns
    -------
    probe : dict
        ``estimator``, ``dataset_size``, ``large_batch`` (``len(mu)``), ``large``
        (``{"mi", "tc", "dw_kl"}``, nats) and ``batches``: one dict per probed size,
        ``batch_size``, ``chunks``, the chunk means ``mi``, ``tc``, ``dw_kl``, and
        ``tc_bias`` = ``tc`` minus the large-batch ``tc``.
    """
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    loc = torch.from_numpy(mu).to(device, dtype)
    sd = torch.from_numpy(scale).to(device, dtype)
    noise = torch.randn(loc.shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    z = loc + sd * noise.to(device)
    names = ("mi", "tc", "dw_kl")

    def terms(sl: slice) -> torch.Tensor:
        return torch.stack(kl_decomposition(z[sl], loc[sl], sd[sl], dataset_size, estimator))

    n = loc.shape[0]
    large = dict(zip(names, terms(slice(0, n)).tolist(), strict=True))
    batches = []
    for b in sorted({b for b in batch_sizes if 2 <= b < n}):
        chunks = [terms(slice(s, s + b)) for s in range(0, n - b + 1, b)]
        mean = dict(zip(names, torch.stack(chunks).mean(dim=0).tolist(), strict=True))
        batches.append(
            {"batch_size": b, "chunks": len(chunks), **mean, "tc_bias": mean["tc"] - large["tc"]}
        )
    return {
        "estimator": estimator,
        "dataset_size": dataset_size,
        "large_batch": n,
        "large": large,
        "batches": batches,
    }
