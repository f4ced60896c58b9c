"""The ``nn.Module`` shell: nidl's ``BetaVAELoss`` interface over :mod:`.functional`."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Bernoulli, Distribution, Laplace, Normal

from . import functional as F
from ._checks import check_dist
from ._dispatch import check_backend, default_backend

__all__ = ["BetaVAELoss"]


class BetaVAELoss(nn.Module):
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
    beta : float, default=4.0
        Weight of the KL divergence.
    default_dist : {"normal", "laplace", "bernoulli"}, default="normal"
        Decoder distribution assumed when ``p`` is given as a tensor.
    backend : {"auto", "triton", "eager"} or None, default=None
        ``"auto"`` runs the Triton kernels on GPU tensors and plain PyTorch otherwise;
        None reads ``BETAVAE_TRITON_BACKEND`` (default ``"auto"``) at construction.
    validate_args : bool or None, default=None
        Check that bernoulli probabilities and targets lie in [0, 1] (one host sync, in
        eager mode only); None follows ``torch.distributions.Distribution``'s default.

    Raises
    ------
    ValueError
        If ``default_dist`` or ``backend`` is not supported.

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
    ) -> None:
        super().__init__()
        self.beta = beta
        self.default_dist = check_dist(default_dist)
        self.backend = check_backend(backend) if backend is not None else default_backend()
        self.validate_args = validate_args

    def extra_repr(self) -> str:
        return f"beta={self.beta}, default_dist={self.default_dist!r}, backend={self.backend!r}"

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

    @staticmethod
    def _posterior(q: object) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(q, Normal):
            raise TypeError(
                f"the posterior q must be a torch.distributions.Normal, got {type(q).__name__}"
            )
        return q.loc, q.scale

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
            ``"loss"``, the beta-VAE loss, with its terms ``"rec_loss"`` and ``"kl_loss"``.
        """
        param, dist, logits = self._decoder_parameter(p)
        loc, scale = self._posterior(q)
        loss, rec, kl = F.beta_vae_loss(
            x,
            param,
            loc,
            scale,
            self.beta,
            dist,
            self.backend,
            validate_args=self.validate_args,
            p_is_logits=logits,
        )
        return {"rec_loss": rec, "kl_loss": kl, "loss": loss}

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
            param, data, dist, self.backend, validate_args=self.validate_args, p_is_logits=logits
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
        return F.kl_normal_loss(loc, scale, self.backend)

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
