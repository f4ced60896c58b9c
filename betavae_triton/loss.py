"""The ``nn.Module`` shell: nidl's ``BetaVAELoss`` interface over :mod:`.functional`."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Bernoulli, Distribution, Laplace, Normal

from . import functional as F
from ._checks import ESTIMATORS, REDUCTIONS, check_dataset_size, check_dist, check_weight
from ._dispatch import check_backend, default_backend
from .tcvae.bank import PosteriorBank

__all__ = ["BetaTCVAELoss", "BetaVAELoss", "CapacityBetaVAELoss"]


def _posterior_bank(size: int, latent_dim: int | None, estimator: str) -> PosteriorBank | None:
    """:class:`BetaTCVAELoss`'s bank of ``size`` posteriors, None for 0; checked."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"bank_size must be an int ≥ 0 (0: no bank), got {size!r}")
    if size == 0:
        return None
    if latent_dim is None:
        raise ValueError("bank_size needs latent_dim: the posterior's dimensions D")
    if estimator != "mss":
        raise ValueError(f"a bank of posteriors needs estimator 'mss', got {estimator!r}")
    return PosteriorBank(size, latent_dim)


class _VAELossModule(nn.Module):
    """What the three loss modules share, as siblings: reading the decoder ``p`` and the
    posterior ``q`` as nidl reads them (a distribution object or a tensor of
    ``default_dist``), the backend, argument validation, the decoder's scale for
    ``full_nll``, and nidl's helper methods (:meth:`reconstruction_loss`,
    :meth:`kl_normal_loss`, ``_parse_distribution``). Each subclass holds only the
    options it honours.
    """

    def __init__(
        self,
        default_dist: str,
        *,
        backend: str | None,
        validate_args: bool | None,
        full_nll: bool = False,
    ) -> None:
        super().__init__()
        self.default_dist = check_dist(default_dist)
        self.backend = check_backend(backend) if backend is not None else default_backend()
        self.validate_args = validate_args
        self.full_nll = bool(full_nll)

    def _term_reduction(self) -> str:
        """The reduction of :meth:`reconstruction_loss` and :meth:`kl_normal_loss`: the
        batch mean, unless the module has a ``reduction`` option."""
        return "mean"

    def _decoder_parameter(self, p: object) -> tuple[torch.Tensor, str, bool]:
        """The tensor the reconstruction loss reads from ``p``, its distribution, and
        whether that tensor holds bernoulli logits."""
        if isinstance(p, Bernoulli):
            # A Bernoulli built from logits keeps them as its parameter: the loss is then
            # computed from the logits, exactly (sigmoid(logits) is never formed).
            logits = vars(p).get("logits")
            if logits is not None and p._param is logits:
                return logits, "bernoulli", True
            return p.probs, "bernoulli", False
        if isinstance(p, Normal):
            return p.loc, "normal", False
        if isinstance(p, Laplace):
            return p.loc, "laplace", False
        if isinstance(p, torch.Tensor):
            return p, self.default_dist, False
        raise TypeError(
            "Decoder distribution must be a torch.distributions Normal, Laplace or Bernoulli, "
            f"or a torch.Tensor, got {type(p).__name__}"
        )

    def _decoder_scale(self, p: object) -> torch.Tensor | None:
        """``p.scale`` with ``full_nll`` (None otherwise, or for a Bernoulli)."""
        if not self.full_nll or isinstance(p, Bernoulli):
            return None
        if isinstance(p, (Normal, Laplace)):
            return p.scale
        raise TypeError(
            "full_nll=True reads the decoder's scale: pass p as a torch.distributions "
            f"Normal or Laplace, not a {type(p).__name__}"
        )

    @staticmethod
    def _posterior(q: object) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(q, Normal):
            raise TypeError(
                f"the posterior q must be a torch.distributions.Normal, got {type(q).__name__}"
            )
        return q.loc, q.scale

    def reconstruction_loss(self, p: Distribution | torch.Tensor, data: torch.Tensor):
        """Per-image reconstruction loss for a batch (a negative log-likelihood).

        Bernoulli gives the binary cross-entropy, Normal the squared error and Laplace the
        absolute error, summed over pixels and channels and averaged over the batch.

        Parameters
        ----------
        p : torch.distributions.Distribution or torch.Tensor
            Probabilistic decoder, or a tensor read as in :meth:`forward`.
        data : torch.Tensor
            The observed data.

        Returns
        -------
        loss : torch.Tensor
            Per-image reconstruction loss (normalised per batch, not per pixel or channel).
        """
        param, dist, logits = self._decoder_parameter(p)
        return F.reconstruction_loss(
            param,
            data,
            dist,
            self.backend,
            validate_args=self.validate_args,
            p_is_logits=logits,
            reduction=self._term_reduction(),
            p_scale=self._decoder_scale(p),
        )

    def kl_normal_loss(self, q: Normal) -> torch.Tensor:
        """KL divergence of a diagonal Normal posterior from the unit Normal.

        Parameters
        ----------
        q : torch.distributions.Normal
            Probabilistic encoder (the estimated posterior).

        Returns
        -------
        kl : torch.Tensor
            Summed over latent dimensions, averaged over the batch.
        """
        loc, scale = self._posterior(q)
        return F.kl_normal_loss(
            loc,
            scale,
            self.backend,
            reduction=self._term_reduction(),
            validate_args=self.validate_args,
        )

    def _parse_distribution(self, p: Distribution | torch.Tensor) -> Distribution:
        """Return ``p`` as a distribution, building ``default_dist`` around a tensor.

        Parameters
        ----------
        p : torch.distributions.Distribution or torch.Tensor
            The decoder output.

        Returns
        -------
        p : torch.distributions.Distribution
            ``p`` itself if it is a supported distribution, else the ``default_dist``
            around it (unit scale for normal and laplace).
        """
        if isinstance(p, (Bernoulli, Normal, Laplace)):
            return p
        if isinstance(p, torch.Tensor):
            if self.default_dist == "normal":
                return Normal(p, torch.ones_like(p), validate_args=self.validate_args)
            if self.default_dist == "laplace":
                return Laplace(p, torch.ones_like(p), validate_args=self.validate_args)
            return Bernoulli(probs=p, validate_args=self.validate_args)
        raise TypeError(
            f"Decoder distribution must be `torch.distributions` or `torch.Tensor`, got {type(p)}"
        )


class BetaVAELoss(_VAELossModule):
    r"""Compute the Beta-VAE loss [1]_: a drop-in for ``nidl.losses.beta_vae.BetaVAELoss``.

    .. math::
        L_{VAE}(\theta, \phi) = L_{rec}(\theta, \phi) + \beta L_{KL}(\theta, \phi)

    The reconstruction term is the per-image negative log-likelihood of the decoder (L2
    for Normal, L1 for Laplace, cross-entropy for Bernoulli), summed over pixels and
    averaged over the batch; the KL term is that of the diagonal Normal posterior from
    N(0, 1), summed over latents and averaged over the batch. When :math:`\beta=1` it is
    the VAE loss; :math:`\beta>1` weighs statistical independence of the latents more.

    Parameters
    ----------
    beta : float or torch.Tensor, default=4.0
        Weight of the KL divergence, at least 0: a real number or a one-element tensor (on
        the data's device, or the CPU). A schedule (KL warm-up, cyclical annealing) sets
        ``loss_fn.beta`` every step; under ``torch.compile`` that compiles at most twice,
        whichever the form.
    default_dist : {"normal", "laplace", "bernoulli"}, default="normal"
        Decoder distribution assumed when ``p`` is given as a tensor.
    backend : {"auto", "triton", "eager"} or None, default=None
        ``"auto"`` runs the Triton kernels on GPU tensors and plain PyTorch otherwise;
        None reads ``BETAVAE_TRITON_BACKEND`` (default ``"auto"``) at construction.
    validate_args : bool or None, default=None
        Check the values (eager mode only): bernoulli probabilities and targets in [0, 1]
        and σ > 0 (a host sync each on a GPU), β neither negative nor NaN (a number, or a
        tensor on the CPU); see :func:`betavae_triton.beta_vae_loss`. None follows
        ``torch.distributions.Distribution``'s default.
    reduction : {"mean", "none"}, default="mean"
        ``"mean"`` averages the per-sample terms over the batch (nidl's loss); ``"none"``
        returns them, shape (B,): the per-subject errors.
    kl_per_dim : bool, default=False
        Add ``"kl_per_dim"`` to the result: the batch-mean KL of each latent dimension
        (which units are active), from the same pass, not differentiable.
    full_nll : bool, default=False
        Use the decoder's scale: a Normal or Laplace ``p`` gives the full negative
        log-likelihood with ``p.scale`` (per element or shared, learned with the model, as
        in the σ-VAE), with gradients to the scale. By default the scale is ignored and
        the loss is nidl's squared / absolute error.

    Raises
    ------
    TypeError
        If ``beta`` is neither a real number nor a tensor.
    ValueError
        If ``default_dist``, ``backend`` or ``reduction`` is not supported.

    References
    ----------
    .. [1] Irina Higgins et al., "beta-VAE: Learning Basic Visual Concepts with a
       Constrained Variational Framework", ICLR 2017.

    Examples
    --------
    >>> import torch
    >>> from torch.distributions import Normal
    >>> from betavae_triton import BetaVAELoss
    >>> loss_fn = BetaVAELoss(beta=4.0, default_dist="bernoulli")
    >>> x = torch.rand(8, 1, 16, 16).round()
    >>> p = torch.rand(8, 1, 16, 16)
    >>> q = Normal(torch.randn(8, 10), torch.rand(8, 10) + 0.5)
    >>> out = loss_fn(x, p, q)
    >>> sorted(out)
    ['kl_loss', 'loss', 'rec_loss']
    """

    def __init__(
        self,
        beta: float = 4.0,
        default_dist: str = "normal",
        *,
        backend: str | None = None,
        validate_args: bool | None = None,
        reduction: str = "mean",
        kl_per_dim: bool = False,
        full_nll: bool = False,
    ) -> None:
        super().__init__(
            default_dist, backend=backend, validate_args=validate_args, full_nll=full_nll
        )
        check_weight("beta", beta, validate_args=False)  # the type (values: at each call)
        self.beta = beta
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        self.reduction = reduction
        self.kl_per_dim = bool(kl_per_dim)

    def extra_repr(self) -> str:
        extra = "" if self.reduction == "mean" else f", reduction={self.reduction!r}"
        extra += ", kl_per_dim=True" if self.kl_per_dim else ""
        extra += ", full_nll=True" if self.full_nll else ""
        return (
            f"beta={self.beta}, default_dist={self.default_dist!r}, backend={self.backend!r}{extra}"
        )

    def _term_reduction(self) -> str:
        return self.reduction

    def forward(self, x: torch.Tensor, p: Distribution | torch.Tensor, q: Normal) -> dict:
        """Compute the loss.

        Parameters
        ----------
        x : torch.Tensor
            The input data, shape ``(B, ...)``.
        p : torch.distributions.Distribution or torch.Tensor
            Decoder distribution p(x | z) (Normal, Laplace or Bernoulli), or a tensor read
            as the mean (normal, laplace) or the probability (bernoulli) of
            ``default_dist``.
        q : torch.distributions.Normal
            Probabilistic encoder (the estimated posterior).

        Returns
        -------
        losses : dict
            ``"loss"``, the beta-VAE loss, with its terms ``"rec_loss"`` and ``"kl_loss"``
            (scalars, or shape (B,) with ``reduction="none"``), and ``"kl_per_dim"`` when
            asked for.
        """
        param, dist, logits = self._decoder_parameter(p)
        loc, scale = self._posterior(q)
        loss, rec, kl, *kl_dims = F.beta_vae_loss(
            x,
            param,
            loc,
            scale,
            self.beta,
            dist,
            self.backend,
            validate_args=self.validate_args,
            p_is_logits=logits,
            reduction=self.reduction,
            kl_per_dim=self.kl_per_dim,
            p_scale=self._decoder_scale(p),
        )
        out = {"rec_loss": rec, "kl_loss": kl, "loss": loss}
        if self.kl_per_dim:
            out["kl_per_dim"] = kl_dims[0]
        return out


class CapacityBetaVAELoss(_VAELossModule):
    r"""Capacity-controlled beta-VAE loss [1]_: rec + γ·|KL − C|, C annealed linearly.

    .. math::
        L(\theta, \phi) = L_{rec}(\theta, \phi) + \gamma \, \lvert L_{KL}(\theta, \phi)
            - C_t \rvert, \qquad C_t = c_{min} + (c_{max} - c_{min})
            \min(t / n_{steps}, 1)

    The step counter ``t`` is a buffer (an int64 tensor that moves with ``.to(device)``)
    that each call in training mode advances by one on the device: no host sync, and no
    recompile under ``torch.compile`` as it advances. It is saved in the ``state_dict``, so
    a resumed run goes on from the same capacity. In eval mode it stays put.

    Parameters
    ----------
    gamma : float or torch.Tensor, default=1000.0
        Weight of the distance between the KL and the capacity: a number or a 0-d tensor,
        which a schedule may change every step (``loss_fn.gamma = …``) without recompiling.
    c_min, c_max : float or torch.Tensor, default=0.0, 25.0
        The capacity, in nats, at step 0 and from step ``n_steps`` on (numbers or 0-d
        tensors, as ``gamma``).
    n_steps : int, default=100000
        Steps over which the capacity rises from ``c_min`` to ``c_max``.
    default_dist : {"normal", "laplace", "bernoulli"}, default="normal"
        Decoder distribution assumed when ``p`` is given as a tensor.
    backend, validate_args
        As in :class:`BetaVAELoss`.

    Raises
    ------
    TypeError
        If ``gamma``, ``c_min`` or ``c_max`` is neither a real number nor a tensor.
    ValueError
        If ``n_steps`` < 1, ``gamma`` < 0, or as :class:`BetaVAELoss` raises. With
        validation on, each call also refuses a negative or NaN ``gamma``, ``c_min``,
        ``c_max`` or capacity (numbers, and tensors on the CPU).

    References
    ----------
    .. [1] Christopher P. Burgess et al., "Understanding disentangling in β-VAE",
       arXiv:1804.03599, 2018.

    Examples
    --------
    >>> import torch
    >>> from torch.distributions import Normal
    >>> from betavae_triton import CapacityBetaVAELoss
    >>> loss_fn = CapacityBetaVAELoss(gamma=100.0, c_max=25.0, n_steps=1000)
    >>> x = torch.randn(8, 1, 16, 16)
    >>> out = loss_fn(x, torch.randn(8, 1, 16, 16), Normal(torch.randn(8, 10), torch.ones(8, 10)))
    >>> sorted(out), int(loss_fn.step)
    (['capacity', 'kl_loss', 'loss', 'rec_loss'], 1)
    """

    step: torch.Tensor

    def __init__(
        self,
        gamma: float = 1000.0,
        c_min: float = 0.0,
        c_max: float = 25.0,
        n_steps: int = 100_000,
        default_dist: str = "normal",
        *,
        backend: str | None = None,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(default_dist, backend=backend, validate_args=validate_args)
        if n_steps < 1:
            raise ValueError(f"n_steps must be at least 1, got {n_steps}")
        for name, weight in (("gamma", gamma), ("c_min", c_min), ("c_max", c_max)):
            check_weight(name, weight, validate_args=False)  # the type (values: at each call)
        if gamma < 0:  # a tensor γ is read once here, at construction
            raise ValueError(f"gamma must be non-negative, got {gamma}")
        # Numbers or 0-d tensors: a schedule may change them every step (no recompiles).
        self.gamma = gamma if isinstance(gamma, torch.Tensor) else float(gamma)
        self.c_min = c_min if isinstance(c_min, torch.Tensor) else float(c_min)
        self.c_max = c_max if isinstance(c_max, torch.Tensor) else float(c_max)
        self.n_steps = int(n_steps)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def extra_repr(self) -> str:
        return (
            f"gamma={self.gamma}, c_min={self.c_min}, c_max={self.c_max}, "
            f"n_steps={self.n_steps}, default_dist={self.default_dist!r}, "
            f"backend={self.backend!r}"
        )

    def capacity(self) -> torch.Tensor:
        """The current capacity C_t, a float32 0-dim tensor on the buffer's device."""
        progress = (self.step.to(torch.float32) / self.n_steps).clamp(max=1.0)
        return self.c_min + (self.c_max - self.c_min) * progress

    def forward(self, x: torch.Tensor, p: Distribution | torch.Tensor, q: Normal) -> dict:
        """Compute the loss at the current capacity, then advance the step (training mode).

        Parameters
        ----------
        x, p, q
            As in :meth:`BetaVAELoss.forward`.

        Returns
        -------
        losses : dict
            ``"loss"`` (rec + γ·|KL − C|), ``"rec_loss"``, ``"kl_loss"`` and the
            ``"capacity"`` C used.
        """
        param, dist, logits = self._decoder_parameter(p)
        loc, scale = self._posterior(q)
        for name in ("c_min", "c_max"):  # (γ and the capacity: in the functional form)
            check_weight(name, getattr(self, name), self.validate_args)
        capacity = self.capacity()
        loss, rec, kl = F.capacity_beta_vae_loss(
            x,
            param,
            loc,
            scale,
            capacity,
            self.gamma,
            dist,
            self.backend,
            validate_args=self.validate_args,
            p_is_logits=logits,
        )
        if self.training:
            self.step.add_(1)
        return {"rec_loss": rec, "kl_loss": kl, "loss": loss, "capacity": capacity}


class BetaTCVAELoss(_VAELossModule):
    r"""Compute the β-TCVAE loss [1]_: the KL term decomposed, total correlation weighted.

    A tensor ``p`` is read as the mean of a Normal decoder (MSE) unless ``default_dist``
    says otherwise, as :class:`BetaVAELoss` (and nidl) read it.

    .. math::
        L = L_{rec} + \alpha\, I(z; x) + \beta\, TC(z) + \gamma \sum_d KL(q(z_d) \| p(z_d))

    The mutual information, total correlation and dimension-wise KL are estimated on the
    minibatch (see :func:`betavae_triton.beta_tcvae_loss` for the formulas and the
    estimators) in O(B·D) extra memory: online log-sum-exps over the batch, never the
    B×B×D tensor of pairwise log-densities.

    Parameters
    ----------
    alpha, beta, gamma : float or torch.Tensor, default=1.0, 6.0, 1.0
        Weights of the mutual information, the total correlation and the dimension-wise
        KL, at least 0: real numbers or one-element tensors, which a schedule may set every
        step without recompiling.
    dataset_size : int
        N, the number of samples in the training set (required): an int or any integral
        number (a NumPy integer).
    default_dist : {"normal", "laplace", "bernoulli"}, default="normal"
        Decoder distribution assumed when ``p`` is given as a tensor: the same default as
        :class:`BetaVAELoss`'s and nidl's. Pass ``"bernoulli"`` for binary data whose
        decoder returns probabilities (or give ``p`` as a ``Bernoulli``).
    estimator : {"mss", "mws", "mss-reference"}, default="mss"
        The minibatch estimator of q(z): stratified sampling with the paper's weights,
        weighted sampling, or the weight matrix of the authors' published code.
    backend, validate_args, full_nll
        As in :class:`BetaVAELoss`.
    gather : bool, default=False
        Under ``torch.distributed``: score each rank's samples against the posteriors of
        the global batch (all-gathered with autograd); see
        :func:`betavae_triton.beta_tcvae_loss`.
    bank_size : int, default=0
        K > 0: keep the last K posteriors of earlier calls in a bank (``self.bank``, a
        :class:`~betavae_triton.tcvae.bank.PosteriorBank` whose buffers are in the
        ``state_dict``) and score every sample against the batch's posteriors and the
        bank's (``bank_loc``, ``bank_scale`` of :func:`betavae_triton.beta_tcvae_loss`):
        the estimate of q(z) then rests on B + K posteriors instead of B. Each call in
        training mode pushes its batch's detached posteriors after scoring it (the
        global batch's with ``gather``: the same bank on every rank); the first push
        fills the bank with copies of the batch, so that its shape never changes (under
        ``torch.compile``: at most one more compile, at the first push, and no host
        sync). Estimator "mss" only, and B + K ≤ ``dataset_size``.
    latent_dim : int or None, default=None
        D, the posterior's dimensions: required with ``bank_size`` (the bank's shape).

    Raises
    ------
    TypeError
        If ``dataset_size`` is not an integer, or a weight neither a real number nor a
        tensor.
    ValueError
        If ``estimator``, ``default_dist`` or ``backend`` is not supported,
        ``dataset_size`` < 2, ``bank_size`` < 0, or a bank without ``latent_dim`` or
        with an estimator other than "mss".

    References
    ----------
    .. [1] Ricky T. Q. Chen et al., "Isolating Sources of Disentanglement in Variational
       Autoencoders", NeurIPS 2018.

    Examples
    --------
    >>> import torch
    >>> from torch.distributions import Normal
    >>> from betavae_triton import BetaTCVAELoss
    >>> loss_fn = BetaTCVAELoss(beta=6.0, dataset_size=1000, default_dist="bernoulli")
    >>> x = torch.rand(8, 1, 16, 16).round()
    >>> q = Normal(torch.randn(8, 10), torch.rand(8, 10) + 0.5)
    >>> out = loss_fn(x, torch.rand(8, 1, 16, 16), q, q.rsample())
    >>> sorted(out)
    ['dw_kl_loss', 'kl_loss', 'loss', 'mi_loss', 'rec_loss', 'tc_loss']
    """

    def __init__(
        self,
        alpha: float | torch.Tensor = 1.0,
        beta: float | torch.Tensor = 6.0,
        gamma: float | torch.Tensor = 1.0,
        dataset_size: int | None = None,
        default_dist: str = "normal",
        estimator: str = "mss",
        *,
        backend: str | None = None,
        gather: bool = False,
        validate_args: bool | None = None,
        full_nll: bool = False,
        bank_size: int = 0,
        latent_dim: int | None = None,
    ) -> None:
        super().__init__(
            default_dist, backend=backend, validate_args=validate_args, full_nll=full_nll
        )
        self.bank = _posterior_bank(bank_size, latent_dim, estimator)
        if dataset_size is None:
            raise TypeError("BetaTCVAELoss needs dataset_size: the number of training samples")
        dataset_size = check_dataset_size(dataset_size)
        for name, weight in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            check_weight(name, weight, validate_args=False)  # the type (values: at each call)
        if dataset_size < 2:
            raise ValueError(f"dataset_size must be at least 2, got {dataset_size}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.dataset_size, self.estimator = dataset_size, estimator
        self.gather = bool(gather)

    def extra_repr(self) -> str:
        extra = ", gather=True" if self.gather else ""
        extra += ", full_nll=True" if self.full_nll else ""
        extra += f", bank_size={self.bank.size}" if self.bank is not None else ""
        return (
            f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, "
            f"dataset_size={self.dataset_size}, default_dist={self.default_dist!r}, "
            f"estimator={self.estimator!r}, backend={self.backend!r}{extra}"
        )

    def forward(
        self, x: torch.Tensor, p: Distribution | torch.Tensor, q: Normal, z: torch.Tensor
    ) -> dict:
        """Compute the loss (with a bank: against the bank too, then, in training mode,
        push the batch's posteriors into it).

        Parameters
        ----------
        x, p, q
            As in :meth:`BetaVAELoss.forward`; the posterior's batch shape is (B, D) or
            broadcasts to it.
        z : torch.Tensor
            The reparameterised sample of ``q`` the decoder was given, shape (B, D).

        Returns
        -------
        losses : dict
            ``"loss"`` (rec + α·mi + β·tc + γ·dw_kl), ``"rec_loss"``, ``"mi_loss"``,
            ``"tc_loss"``, ``"dw_kl_loss"``, and ``"kl_loss"``: the plain KL of the
            posterior from N(0, 1), batch-averaged (not part of the loss; for logging).
        """
        param, dist, logits = self._decoder_parameter(p)
        loc, scale = self._posterior(q)
        bank = self.bank.contents(z) if self.bank is not None else None
        loss, rec, mi, tc, dw_kl, kl = F._beta_tcvae_terms(
            x,
            param,
            z,
            loc,
            scale,
            self.alpha,
            self.beta,
            self.gamma,
            self.dataset_size,
            dist,
            self.estimator,
            False,
            self.backend,
            validate_args=self.validate_args,
            p_is_logits=logits,
            p_scale=self._decoder_scale(p),
            gather=self.gather,
            group=None,
            bank_loc=None if bank is None else bank[0],
            bank_scale=None if bank is None else bank[1],
        )
        if self.bank is not None and self.training:
            self.bank.push(loc.expand_as(z), scale.expand_as(z), self.gather)
        return {
            "loss": loss,
            "rec_loss": rec,
            "mi_loss": mi,
            "tc_loss": tc,
            "dw_kl_loss": dw_kl,
            "kl_loss": kl,
        }
