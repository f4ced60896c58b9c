"""The functional core: the beta-VAE loss on plain tensors.

:class:`betavae_triton.BetaVAELoss` is a thin module over these functions, as
``torch.nn.MSELoss`` is over ``torch.nn.functional.mse_loss``.
"""

from __future__ import annotations

import torch

from ._checks import (
    check_bank,
    check_loss_inputs,
    check_same_device,
    check_tcvae_inputs,
    check_weight,
    loss_weight,
)
from .tcvae import minibatch_terms, planned_terms, world
from .vae import beta_vae_terms

__all__ = [
    "beta_tcvae_loss",
    "beta_vae_loss",
    "capacity_beta_vae_loss",
    "kl_decomposition",
    "kl_normal_loss",
    "reconstruction_loss",
]


def beta_vae_loss(
    x: torch.Tensor,
    p: torch.Tensor,
    q_loc: torch.Tensor,
    q_scale: torch.Tensor,
    beta: float = 4.0,
    dist: str = "normal",
    backend: str | None = None,
    *,
    validate_args: bool | None = None,
    p_is_logits: bool = False,
    q_is_logvar: bool = False,
    reduction: str = "mean",
    kl_per_dim: bool = False,
    p_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    r"""Compute the beta-VAE loss from tensors: the fastest path, no distribution objects.

    .. math::
        \mathcal{L} = \frac{1}{B}\sum \ell(p, x)
            + \beta \, \frac{1}{B_q}\sum \left[\tfrac12(\mu^2 + \sigma^2 - 1) - \log\sigma\right]

    with :math:`\ell` the squared error (``"normal"``), the absolute error (``"laplace"``) or
    the binary cross-entropy (``"bernoulli"``, logs clamped at -100 as
    ``torch.nn.functional.binary_cross_entropy`` does).

    Parameters
    ----------
    x : torch.Tensor
        The data, shape ``(B, ...)``.
    p : torch.Tensor
        The decoder's output, shape of ``x``: the mean (normal, laplace) or the probability
        (bernoulli) of each element.
    q_loc, q_scale : torch.Tensor
        Mean and standard deviation of the diagonal Normal posterior (or its log-variance,
        with ``q_is_logvar``); they broadcast to ``(Bq, ...)``.
    beta : float or torch.Tensor, default=4.0
        Weight of the KL divergence, at least 0: a real number (int, float, a NumPy
        number) or a one-element tensor (on the data's device, or the CPU), read on the
        device by the kernels, so that a schedule that changes it every step compiles at
        most twice under ``torch.compile``. It does not change the results' dtypes. A
        tensor that requires grad gets dL/dβ = ``kl_loss`` (summed over the samples with
        ``reduction="none"``).
    dist : {"normal", "laplace", "bernoulli"}, default="normal"
        Decoder distribution, which defines the reconstruction loss.
    backend : {"auto", "triton", "eager"} or None, default=None
        Implementation; None reads ``BETAVAE_TRITON_BACKEND`` and falls back to ``"auto"``.
    validate_args : bool or None, default=None
        Check the values, in eager mode only: that bernoulli probabilities and targets lie
        in [0, 1] and that σ > 0 (unless ``q_is_logvar``), a host sync each on a GPU; and
        that β is neither negative nor NaN (a number, or a tensor on the CPU: no sync; a
        tensor β on a GPU is not read). None follows ``torch.distributions.Distribution``'s
        global default.
    p_is_logits : bool, default=False
        With ``dist="bernoulli"``: ``p`` holds logits, and the cross-entropy is computed
        from them exactly and stably (``max(l, 0) − x·l + log(1 + e^−|l|)``), without the
        −100 clamp and without materialising ``sigmoid(p)``.
    q_is_logvar : bool, default=False
        ``q_scale`` holds the log-variance log σ² instead of σ; the exponential is fused
        into the KL and the gradient flows to the log-variance.
    reduction : {"mean", "none"}, default="mean"
        ``"mean"``: each term summed per sample and averaged over the batch (nidl's loss).
        ``"none"``: the per-sample sums, shape (B,) (the per-subject error that normative
        modelling ranks subjects by); the posterior's batch must be B or 1.
    kl_per_dim : bool, default=False
        Also return the batch-mean KL of each latent dimension (shape of one posterior
        sample), from the same pass: the active units, or a posterior collapse.
    p_scale : torch.Tensor or None, default=None
        The decoder's scale (normal σ or laplace b), learned with the model (σ-VAE): the
        reconstruction becomes the full negative log-likelihood
        ``½((x − p)/σ)² + log σ + ½ log 2π`` (normal) or ``|x − p|/b + log b + log 2``
        (laplace), with gradients to the scale. One element (shared: its gradient is a
        reduction in the same pass) or any shape that broadcasts to x. None keeps nidl's
        squared / absolute error.

    Returns
    -------
    loss, rec_loss, kl_loss : torch.Tensor
        ``loss = rec_loss + beta * kl_loss``: scalars, or shape (B,) with
        ``reduction="none"``.
    kl_per_dim : torch.Tensor
        Only with ``kl_per_dim=True``: a fourth result, not differentiable.

    Raises
    ------
    TypeError
        If a tensor is not floating point, or ``beta`` is neither a real number nor a
        tensor.
    ValueError
        On mismatched shapes or devices, an empty batch, an unknown ``dist`` or ``backend``,
        a ``beta`` of more than one element, or, when validation is on, bernoulli values
        outside [0, 1], a σ ≤ 0, or a negative or NaN ``beta``.
    RuntimeError
        If ``backend="triton"`` cannot run on these tensors.
    """
    check_weight("beta", beta, validate_args)
    kind, per_sample = check_loss_inputs(
        x, p, q_loc, q_scale, dist=dist, p_is_logits=p_is_logits, reduction=reduction,
        p_scale=p_scale, q_is_logvar=q_is_logvar, validate_args=validate_args,
    )  # fmt: skip
    loss, rec, kl, kl_dims = beta_vae_terms(
        x, p, q_loc, q_scale, backend, p_scale=p_scale, beta=beta, dist=kind,
        q_is_logvar=q_is_logvar, per_sample=per_sample, kl_per_dim=kl_per_dim,
    )  # fmt: skip
    return (loss, rec, kl, kl_dims) if kl_per_dim else (loss, rec, kl)


def reconstruction_loss(
    p: torch.Tensor,
    x: torch.Tensor,
    dist: str = "normal",
    backend: str | None = None,
    *,
    validate_args: bool | None = None,
    p_is_logits: bool = False,
    reduction: str = "mean",
    p_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-image reconstruction loss: Σ ℓ(p, x) over every element, divided by B.

    Parameters
    ----------
    p : torch.Tensor
        The decoder's mean (normal, laplace) or probability (bernoulli), shape of ``x``.
    x : torch.Tensor
        The data, shape ``(B, ...)``.
    dist : {"normal", "laplace", "bernoulli"}, default="normal"
        Decoder distribution.
    backend : {"auto", "triton", "eager"} or None, default=None
        Implementation, as in :func:`beta_vae_loss`.
    validate_args : bool or None, default=None
        As in :func:`beta_vae_loss`.
    p_is_logits : bool, default=False
        As in :func:`beta_vae_loss`: ``p`` holds bernoulli logits.
    reduction : {"mean", "none"}, default="mean"
        As in :func:`beta_vae_loss`: ``"none"`` gives the per-sample sums, shape (B,).
    p_scale : torch.Tensor or None, default=None
        As in :func:`beta_vae_loss`: the decoder's scale, for the full likelihood.

    Returns
    -------
    rec_loss : torch.Tensor
        A scalar in the dtype of ``p`` and ``x`` promoted.
    """
    kind, per_sample = check_loss_inputs(
        x, p, None, None, dist=dist, p_is_logits=p_is_logits, reduction=reduction,
        p_scale=p_scale, validate_args=validate_args,
    )  # fmt: skip
    options = dict(p_scale=p_scale, dist=kind, per_sample=per_sample)
    _, rec, _, _ = beta_vae_terms(x, p, None, None, backend, **options)
    return rec


def kl_normal_loss(
    q_loc: torch.Tensor,
    q_scale: torch.Tensor,
    backend: str | None = None,
    *,
    q_is_logvar: bool = False,
    reduction: str = "mean",
    validate_args: bool | None = None,
) -> torch.Tensor:
    """KL divergence of N(μ, σ²) from N(0, 1), summed over latents and averaged over batch.

    Parameters
    ----------
    q_loc, q_scale : torch.Tensor
        Mean and standard deviation of the diagonal Normal posterior (or its log-variance,
        with ``q_is_logvar``), broadcasting to ``(Bq, ...)``.
    backend : {"auto", "triton", "eager"} or None, default=None
        Implementation, as in :func:`beta_vae_loss`.
    q_is_logvar : bool, default=False
        ``q_scale`` holds log σ²: the KL is Σ ½(μ² + e^v − 1 − v) / Bq.
    reduction : {"mean", "none"}, default="mean"
        ``"none"`` gives the per-sample sums, shape (Bq,).
    validate_args : bool or None, default=None
        Check that σ > 0 (unless ``q_is_logvar``; a host sync on a GPU, eager mode only),
        as in :func:`beta_vae_loss`.

    Returns
    -------
    kl_loss : torch.Tensor
        A scalar, equal to ``kl_divergence(Normal(q_loc, q_scale), Normal(0, 1))
        .mean(dim=0).sum()``, in the dtype of ``q_loc`` and ``q_scale`` promoted.

    Raises
    ------
    TypeError, ValueError
        As :func:`beta_vae_loss` raises for these arguments.
    """
    _, per_sample = check_loss_inputs(
        None, None, q_loc, q_scale, reduction=reduction, q_is_logvar=q_is_logvar,
        validate_args=validate_args,
    )  # fmt: skip
    options = dict(q_is_logvar=q_is_logvar, per_sample=per_sample)
    _, _, kl, _ = beta_vae_terms(None, None, q_loc, q_scale, backend, **options)
    return kl


def capacity_beta_vae_loss(
    x: torch.Tensor,
    p: torch.Tensor,
    q_loc: torch.Tensor,
    q_scale: torch.Tensor,
    capacity: torch.Tensor | float,
    gamma: float = 1000.0,
    dist: str = "normal",
    backend: str | None = None,
    *,
    validate_args: bool | None = None,
    p_is_logits: bool = False,
    q_is_logvar: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Capacity-controlled beta-VAE loss (Burgess et al., 2018): rec + γ·|KL − C|.

    .. math::
        \mathcal{L} = \mathcal{L}_{rec} + \gamma \, \lvert \mathcal{L}_{KL} - C \rvert

    The two terms come from the same fused pass as :func:`beta_vae_loss`'s; the gradient
    of the KL term is scaled by γ·sign(KL − C) on the device, without a host sync.

    Parameters
    ----------
    x, p, q_loc, q_scale
        As in :func:`beta_vae_loss`.
    capacity : torch.Tensor or float
        The target KL, C, in nats, at least 0: a number or a 0-dim tensor on the data's
        device (so a value that changes every step causes no recompile under
        ``torch.compile``).
    gamma : float or torch.Tensor, default=1000.0
        Weight of the distance between the KL and the capacity, at least 0: a number or a
        0-d tensor.
    dist, backend, validate_args, p_is_logits, q_is_logvar
        As in :func:`beta_vae_loss`.

    Returns
    -------
    loss, rec_loss, kl_loss : torch.Tensor
        Scalars: ``loss = rec_loss + gamma * |kl_loss - capacity|``.

    Raises
    ------
    TypeError
        If ``capacity`` or ``gamma`` is neither a real number nor a tensor, or as
        :func:`beta_vae_loss` raises.
    ValueError
        If ``capacity`` is a tensor with more than one element or on another device, if
        (with validation on; tensors only on the CPU, as for β) ``capacity`` or ``gamma``
        is negative or NaN, or as :func:`beta_vae_loss` raises.

    References
    ----------
    .. [1] Christopher P. Burgess et al., "Understanding disentangling in β-VAE",
       arXiv:1804.03599, 2018.
    """
    check_weight("capacity", capacity, validate_args)
    check_weight("gamma", gamma, validate_args)
    if isinstance(capacity, torch.Tensor):
        if capacity.numel() != 1:
            raise ValueError(
                f"capacity must be a number or a one-element tensor, got shape "
                f"{tuple(capacity.shape)}"
            )
        if capacity.device != x.device and capacity.device.type == "cpu":
            # A CPU counter (CapacityBetaVAELoss not moved with .to()): no sync to move it.
            capacity = capacity.to(x.device, non_blocking=True)
        if capacity.device != x.device:
            raise ValueError(
                f"capacity is on {capacity.device} but x is on {x.device}; put it on the "
                "data's device (for CapacityBetaVAELoss: loss_fn.to(device))"
            )
    _, rec, kl = beta_vae_loss(
        x,
        p,
        q_loc,
        q_scale,
        0.0,
        dist,
        backend,
        validate_args=validate_args,
        p_is_logits=p_is_logits,
        q_is_logvar=q_is_logvar,
    )
    c = torch.as_tensor(capacity, dtype=kl.dtype, device=kl.device).reshape(())
    distance = gamma * (kl - c).abs()
    if isinstance(gamma, torch.Tensor):  # a tensor γ weighs like a number: same dtypes
        distance = distance.to(kl.dtype)
    return rec + distance, rec, kl


def _weigh(weight: float | torch.Tensor, term: torch.Tensor) -> torch.Tensor:
    """``weight · term`` in ``term``'s dtype: a number, or a one-element tensor (the data's
    device or the CPU) that a schedule may change every step without a recompile."""
    _, tensor = loss_weight(weight, term.device)
    if tensor is None:
        return weight * term
    return (tensor * term).to(term.dtype)


def beta_tcvae_loss(
    x: torch.Tensor,
    p: torch.Tensor,
    z: torch.Tensor,
    q_loc: torch.Tensor,
    q_scale: torch.Tensor,
    alpha: float | torch.Tensor = 1.0,
    beta: float | torch.Tensor = 6.0,
    gamma: float | torch.Tensor = 1.0,
    dataset_size: int | None = None,
    dist: str = "normal",
    estimator: str = "mss",
    q_is_logvar: bool = False,
    backend: str | None = None,
    *,
    validate_args: bool | None = None,
    p_is_logits: bool = False,
    p_scale: torch.Tensor | None = None,
    gather: bool = False,
    group: object | None = None,
    bank_loc: torch.Tensor | None = None,
    bank_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    r"""Compute the β-TCVAE loss [1]_: the KL term split into index-code mutual information,
    total correlation and dimension-wise KL, each with its own weight.

    .. math::
        \mathcal{L} = \mathcal{L}_{rec} + \alpha\, I(z; x) + \beta\, TC(z)
            + \gamma \sum_d KL(q(z_d) \,\|\, p(z_d))

    estimated on the minibatch, with B the batch, N the dataset size and
    log N(z; μ, σ) the Gaussian log-density:

    - log q(z_i|x_i) = Σ_d log N(z_id; μ_id, σ_id) and log p(z_i) = Σ_d log N(z_id; 0, 1)
    - log q(z_i) ≈ LSE_j [Σ_d log N(z_id; μ_jd, σ_jd) + log w_ij]
    - log Π_d q(z_id) ≈ Σ_d LSE_j [log N(z_id; μ_jd, σ_jd) + log w_ij]
    - mi, tc, dw_kl: the batch means of log q(z|x) − log q(z), log q(z) − log Π q(z) and
      log Π q(z) − log p(z) (their sum is the one-sample estimate of the KL term).

    The pairwise terms are online log-sum-exps over the batch (Triton kernels on a GPU,
    chunked torch ops on the CPU), never a B×B×D tensor: extra memory O(B·D), backward
    by recomputation, deterministic.

    Parameters
    ----------
    x, p
        The data and the decoder's output, as in :func:`beta_vae_loss`.
    z : torch.Tensor
        The reparameterised sample of the posterior, shape (B, D).
    q_loc, q_scale : torch.Tensor
        The posterior's mean and standard deviation (log-variance with ``q_is_logvar``),
        broadcastable to z.
    alpha, beta, gamma : float or torch.Tensor, default=1.0, 6.0, 1.0
        Weights of mi, tc and dw_kl, at least 0: real numbers or one-element tensors (the
        data's device or the CPU), which a schedule may change every step (at most two
        compiles under ``torch.compile``). A tensor that requires grad gets the gradient
        of its term: dL/dα = ``mi_loss``, dL/dβ = ``tc_loss``, dL/dγ = ``dw_kl_loss``.
    dataset_size : int
        N, the number of samples in the training set (required; at least the batch): an
        int or any integral number (a NumPy integer).
    dist : {"normal", "laplace", "bernoulli"}, default="normal"
        Decoder distribution, as in :func:`beta_vae_loss` (and its default, nidl's).
    estimator : {"mss", "mws", "mss-reference"}, default="mss"
        The importance weights w_ij of the minibatch estimate of q(z). ``"mws"``: minibatch
        weighted sampling, w_ij = 1/(B·N). ``"mss"``: minibatch stratified sampling with the
        weights of the paper's appendix: in row i, 1/N for the sample's own posterior
        (j = i), (N − B + 1)/(N(B − 1)) for the next one (j = i + 1 mod B) and 1/(B − 1)
        for the others (each row sums to 1). ``"mss-reference"``: the matrix of the
        authors' published code (``log_importance_weight_matrix``), which puts 1/N in
        column 0 and the stratum weight in column 1 (and at row B − 2 of column 0) whatever
        the row, so that the own sample is weighted 1/(B − 1) except in rows 0 and 1: use
        it only to match results obtained with that code.
    q_is_logvar : bool, default=False
        ``q_scale`` holds log σ².
    backend : {"auto", "triton", "eager"} or None, default=None
        As in :func:`beta_vae_loss`.
    validate_args : bool or None, default=None
        Check the values, as in :func:`beta_vae_loss`: bernoulli values, σ > 0 (a host
        sync each on a GPU, eager mode only), and α, β, γ neither negative nor NaN.
    p_is_logits, p_scale
        As in :func:`beta_vae_loss`.
    gather : bool, default=False
        With ``torch.distributed`` initialised: all-gather μ and σ across the ranks of
        ``group`` (with autograd), and score this rank's z against the posteriors of the
        global batch (every rank must hold a batch of the same size; N must be at least
        the global batch). Each rank returns the means over its own samples, so that the
        mean over ranks (what DDP's averaged gradients follow) equals the loss of one
        process given the concatenated batch. Without it every rank estimates q(z) from its
        local batch alone.
    group : torch.distributed.ProcessGroup or None, default=None
        The ranks to gather across (None: the default group).
    bank_loc, bank_scale : torch.Tensor or None, default=None
        A bank of K more posteriors, shape (K, D), read as ``q_loc`` and ``q_scale`` are
        (``q_is_logvar`` included), in z's dtype and device: every sample is scored
        against the (global) batch's posteriors and the bank's, so that the estimate of
        q(z) no longer depends on the batch alone (:class:`~betavae_triton.BetaTCVAELoss`
        with ``bank_size`` keeps one). No gradient reaches them. Estimator ``"mss"``
        only, whose weights with a bank are 1/N for a sample's own posterior and
        (N − 1)/(N(T − 1)) for each of the T − 1 others (T = B + K): when the batch and
        the bank hold every posterior of the data set (T = N), log q(z) and log q(z_d)
        are exact (the derivation: ``betavae_triton/tcvae/weights.py``). B + K ≤ N.

    Returns
    -------
    loss, rec_loss, mi_loss, tc_loss, dw_kl_loss : torch.Tensor
        Scalars: ``loss = rec_loss + alpha * mi_loss + beta * tc_loss + gamma *
        dw_kl_loss``. The three terms are float64 for float64 inputs, float32 otherwise.

    Raises
    ------
    TypeError
        If a tensor is not floating point, ``dataset_size`` is missing or not an integer,
        or a weight is neither a real number nor a tensor.
    ValueError
        If z is not (B, D), the batch holds fewer than 2 samples or more than
        ``dataset_size``, μ or σ does not broadcast to z, σ ≤ 0 or a negative or NaN
        weight with validation on, an unknown estimator, a bank that is not (K, D) in
        z's dtype and device, with an estimator other than "mss" or larger than N − B,
        or as :func:`beta_vae_loss` raises.
    RuntimeError
        If ``gather=True`` without an initialised process group, or as
        :func:`beta_vae_loss` raises.

    References
    ----------
    .. [1] Ricky T. Q. Chen et al., "Isolating Sources of Disentanglement in Variational
       Autoencoders", NeurIPS 2018.
    """
    return _beta_tcvae_terms(
        x, p, z, q_loc, q_scale, alpha, beta, gamma, dataset_size, dist, estimator,
        q_is_logvar, backend, validate_args=validate_args, p_is_logits=p_is_logits,
        p_scale=p_scale, gather=gather, group=group, bank_loc=bank_loc, bank_scale=bank_scale,
    )[:5]  # fmt: skip


def _beta_tcvae_terms(
    x: torch.Tensor,
    p: torch.Tensor,
    z: torch.Tensor,
    q_loc: torch.Tensor,
    q_scale: torch.Tensor,
    alpha: float | torch.Tensor,
    beta: float | torch.Tensor,
    gamma: float | torch.Tensor,
    dataset_size: int | None,
    dist: str,
    estimator: str,
    q_is_logvar: bool,
    backend: str | None,
    *,
    validate_args: bool | None,
    p_is_logits: bool,
    p_scale: torch.Tensor | None,
    gather: bool,
    group: object | None,
    bank_loc: torch.Tensor | None = None,
    bank_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """:func:`beta_tcvae_loss`'s results and, sixth, the plain KL of the posterior from
    N(0, 1) for logging (no gradient): the reconstruction and that KL come from one call
    of the β-VAE path (one launch set on the Triton backend), the decomposition from the
    pairwise operator. What :class:`~betavae_triton.BetaTCVAELoss` calls."""
    for name, weight in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        check_weight(name, weight, validate_args)
    _, world_size = world(gather, group)
    dataset_size = check_tcvae_inputs(
        z, q_loc, q_scale, dataset_size, estimator, q_is_logvar, validate_args, world_size
    )
    bank = check_bank(
        z, bank_loc, bank_scale, dataset_size, estimator, q_is_logvar, validate_args, world_size
    )
    check_same_device(x, z)
    # The reconstruction's checks (σ was checked above: no second sync for it).
    kind, _ = check_loss_inputs(
        x, p, None, None, dist=dist, p_is_logits=p_is_logits, p_scale=p_scale,
        validate_args=validate_args,
    )  # fmt: skip
    _, rec, kl, _ = beta_vae_terms(
        x, p, q_loc.detach(), q_scale.detach(), backend, p_scale=p_scale, beta=0.0, dist=kind,
        q_is_logvar=q_is_logvar,
    )  # fmt: skip
    mi, tc, dw_kl = minibatch_terms(
        z, q_loc, q_scale, dataset_size, estimator, q_is_logvar, backend, gather, group, bank
    )
    loss = rec + _weigh(alpha, mi) + _weigh(beta, tc) + _weigh(gamma, dw_kl)
    return loss, rec, mi, tc, dw_kl, kl


def kl_decomposition(
    z: torch.Tensor,
    q_loc: torch.Tensor,
    q_scale: torch.Tensor,
    dataset_size: int,
    estimator: str = "mss",
    q_is_logvar: bool = False,
    backend: str | None = None,
    *,
    validate_args: bool | None = None,
    gather: bool = False,
    group: object | None = None,
    bank_loc: torch.Tensor | None = None,
    bank_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""β-TCVAE's decomposition of the KL term alone: ``(mi, tc, dw_kl)`` [1]_.

    The three terms of :func:`beta_tcvae_loss`, unweighted and without a reconstruction:
    index-code mutual information, total correlation and dimension-wise KL, estimated on
    the batch in O(B·D) extra memory, differentiable in z, μ and σ. Their sum is the
    one-sample estimate of the KL term, so this is also how to measure a model's total
    correlation on a batch far larger than its training batch (a B×B×D formula would need
    B²·D values; this needs B·D).

    Parameters
    ----------
    z, q_loc, q_scale, dataset_size, estimator, q_is_logvar, backend
        As in :func:`beta_tcvae_loss`.
    validate_args, gather, group, bank_loc, bank_scale
        As in :func:`beta_tcvae_loss`.

    Returns
    -------
    mi, tc, dw_kl : torch.Tensor
        Scalars, float64 for float64 inputs and float32 otherwise.

    Raises
    ------
    TypeError, ValueError, RuntimeError
        As :func:`beta_tcvae_loss` raises for these arguments.

    References
    ----------
    .. [1] Chen et al., NeurIPS 2018 (see :func:`beta_tcvae_loss`).
    """
    if not gather and bank_loc is None and bank_scale is None:
        planned = planned_terms(
            z, q_loc, q_scale, dataset_size, estimator, q_is_logvar, backend, check=True
        )
        if planned is not None:  # inside torch.compile: checked and routed once per trace
            return planned
    world_size = world(gather, group)[1]
    dataset_size = check_tcvae_inputs(
        z, q_loc, q_scale, dataset_size, estimator, q_is_logvar, validate_args, world_size
    )
    bank = check_bank(
        z, bank_loc, bank_scale, dataset_size, estimator, q_is_logvar, validate_args, world_size
    )
    return minibatch_terms(
        z, q_loc, q_scale, dataset_size, estimator, q_is_logvar, backend, gather, group, bank
    )
