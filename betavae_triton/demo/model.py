"""A small convolutional VAE for 64x64 single-channel images (Burgess et al., 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvVAE"]


class ConvVAE(nn.Module):
    """Convolutional VAE with a diagonal Normal posterior.

    The encoder is four 4x4 stride-2 convolutions (64 -> 4 pixels) and two hidden
    linear layers, ending in the posterior mean ``mu`` and a raw scale that softplus
    turns into the standard deviation. The decoder mirrors it with transposed
    convolutions and outputs 64x64 logits; :meth:`forward` passes them through a
    sigmoid, which is the Bernoulli probability for binary data, or the mean of the
    Normal or Laplace decoder (the data lie in [0, 1]).

    Parameters
    ----------
    latent_dim : int, default=10
        Number of latent dimensions.
    channels : int, default=32
        Channels of every convolution.
    hidden : int, default=256
        Width of the hidden linear layers.
    """

    def __init__(self, latent_dim: int = 10, channels: int = 32, hidden: int = 256) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        c = channels
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c, 4, stride=2, padding=1),  # 32x32
            nn.ReLU(),
            nn.Conv2d(c, c, 4, stride=2, padding=1),  # 16x16
            nn.ReLU(),
            nn.Conv2d(c, c, 4, stride=2, padding=1),  # 8x8
            nn.ReLU(),
            nn.Conv2d(c, c, 4, stride=2, padding=1),  # 4x4
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(c * 16, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 2 * latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, c * 16),
            nn.ReLU(),
            nn.Unflatten(1, (c, 4, 4)),
            nn.ConvTranspose2d(c, c, 4, stride=2, padding=1),  # 8x8
            nn.ReLU(),
            nn.ConvTranspose2d(c, c, 4, stride=2, padding=1),  # 16x16
            nn.ReLU(),
            nn.ConvTranspose2d(c, c, 4, stride=2, padding=1),  # 32x32
            nn.ReLU(),
            nn.ConvTranspose2d(c, 1, 4, stride=2, padding=1),  # 64x64
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters of a batch.

        Parameters
        ----------
        x : torch.Tensor
            Images, shape ``(B, 1, 64, 64)``.

        Returns
        -------
        mu, scale : torch.Tensor
            Mean and standard deviation of q(z | x), each of shape ``(B, latent_dim)``.
        """
        mu, raw_scale = self.encoder(x).chunk(2, dim=1)
        return mu, F.softplus(raw_scale) + 1e-6

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output in [0, 1]: Bernoulli probabilities, or Normal/Laplace means.

        Parameters
        ----------
        z : torch.Tensor
            Latent codes, shape ``(B, latent_dim)``.

        Returns
        -------
        p : torch.Tensor
            Shape ``(B, 1, 64, 64)``.
        """
        return torch.sigmoid(self.decoder(z))

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's logits, before the sigmoid of :meth:`decode`.

        Parameters
        ----------
        z : torch.Tensor
            Latent codes, shape ``(B, latent_dim)``.

        Returns
        -------
        logits : torch.Tensor
            Shape ``(B, 1, 64, 64)``.
        """
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, draw one reparameterised sample, decode to logits.

        Parameters
        ----------
        x : torch.Tensor
            Images, shape ``(B, 1, 64, 64)``.

        Returns
        -------
        logits : torch.Tensor
            Decoder logits for the sampled code, shape of ``x`` (``torch.sigmoid`` of them
            is :meth:`decode`'s output).
        mu, scale : torch.Tensor
            Posterior mean and standard deviation, shape ``(B, latent_dim)``.
        z : torch.Tensor
            The sample the decoder read, ``mu + scale * eps``, shape ``(B, latent_dim)``
            (what :class:`betavae_triton.BetaTCVAELoss` scores against the batch's
            posteriors).
        """
        mu, scale = self.encode(x)
        z = mu + scale * torch.randn_like(mu)
        return self.decode_logits(z), mu, scale, z
