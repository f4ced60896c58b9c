"""Procedural 2D sprites in the manner of dSprites, rendered in-process (no download).

Each image is 64x64 and binary: one white sprite on a black background. Five
ground-truth factors, each on a discrete grid as in dSprites (Matthey et al., 2017):

========  =======  ===============================================
factor    values   meaning
========  =======  ===============================================
shape     3        square, ellipse, heart
scale     6        linearly from 0.5 to 1 (times the largest size)
rotation  40       linearly in [0, 2π) radians
pos_x     32       linearly across the image (sprite fully inside)
pos_y     32       linearly across the image
========  =======  ===============================================

Factors are drawn uniformly and independently with a seeded ``numpy`` generator, and the
rendering is vectorised: each pixel centre of a chunk of images is mapped into the
sprite's own frame at once and tested against the shape's implicit equation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "FACTOR_NAMES",
    "FACTOR_SIZES",
    "IMAGE_SIZE",
    "SHAPE_NAMES",
    "Sprites",
    "factor_values",
    "make_sprites",
    "render",
    "sample_factors",
]

IMAGE_SIZE = 64
SHAPE_NAMES = ("square", "ellipse", "heart")
FACTOR_NAMES = ("shape", "scale", "rotation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)

# Largest sprite: its shape fits inside a disc of this radius (pixels).
_MAX_RADIUS = 10.0
# Positions keep the largest sprite, in any rotation, inside the image with a margin.
_POS_LOW = _MAX_RADIUS + 1.5
_POS_HIGH = IMAGE_SIZE - _MAX_RADIUS - 1.5


@dataclass(frozen=True)
class Sprites:
    """A data set of sprites with its ground truth.

    Attributes
    ----------
    images : torch.Tensor
        ``uint8`` tensor of shape ``(N, 1, 64, 64)``, values in {0, 1}.
    factors : numpy.ndarray
        ``int64`` array of shape ``(N, 5)``: the index of each factor's value on its
        grid, columns in the order of :data:`FACTOR_NAMES`.
    """

    images: torch.Tensor
    factors: np.ndarray

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, index: torch.Tensor | np.ndarray | slice) -> torch.Tensor:
        """Return images ``index`` as a ``float32`` tensor with values in {0, 1}.

        Parameters
        ----------
        index : torch.Tensor, numpy.ndarray or slice
            Which images.

        Returns
        -------
        x : torch.Tensor
            Shape ``(len(index), 1, 64, 64)``.
        """
        return self.images[index].float()


def factor_values(factors: np.ndarray) -> dict[str, np.ndarray]:
    """Map factor indices to the physical values the renderer uses.

    Parameters
    ----------
    factors : numpy.ndarray
        Integer array of shape ``(N, 5)`` of factor indices.

    Returns
    -------
    values : dict of str to numpy.ndarray
        ``shape`` (index), ``scale`` (fraction of the largest size), ``rotation``
        (radians), ``pos_x`` and ``pos_y`` (sprite centre in pixels), each of shape ``(N,)``.
    """
    factors = np.asarray(factors)
    return {
        "shape": factors[:, 0],
        "scale": np.linspace(0.5, 1.0, FACTOR_SIZES[1])[factors[:, 1]],
        "rotation": factors[:, 2] * (2.0 * np.pi / FACTOR_SIZES[2]),
        "pos_x": np.linspace(_POS_LOW, _POS_HIGH, FACTOR_SIZES[3])[factors[:, 3]],
        "pos_y": np.linspace(_POS_LOW, _POS_HIGH, FACTOR_SIZES[4])[factors[:, 4]],
    }


def sample_factors(n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` factor combinations uniformly and independently.

    Parameters
    ----------
    n : int
        Number of sprites.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    factors : numpy.ndarray
        ``int64`` array of shape ``(n, 5)``.
    """
    return np.stack([rng.integers(0, k, size=n) for k in FACTOR_SIZES], axis=1).astype(np.int64)


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether sprite-frame points ``(u, v)`` (unit = largest radius) lie inside ``shape``."""
    if shape == 0:  # square
        return (np.abs(u) <= 0.7) & (np.abs(v) <= 0.7)
    if shape == 1:  # ellipse, twice as long as wide
        return u * u + 4.0 * v * v <= 1.0
    # The heart curve (x² + y² − 1)³ ≤ x² y³ spans x in ±1.14, y in [−1, 1.25]; the
    # smallest disc around it is centred at (0, 0.25) with radius 1.25 (it touches the tip
    # and the lobes): map that disc onto the unit disc. v points down the image, y up.
    hx = u * 1.25
    hy = 0.25 - v * 1.25
    hx2 = hx * hx
    r = hx2 + hy * hy - 1.0
    return r * r * r <= hx2 * hy * hy * hy


def render(factors: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Render sprites from factor indices.

    Parameters
    ----------
    factors : numpy.ndarray
        Integer array of shape ``(N, 5)`` of factor indices.
    chunk : int, default=1024
        Images rendered at once (bounds the temporary memory).

    Returns
    -------
    images : numpy.ndarray
        ``uint8`` array of shape ``(N, 64, 64)``, values in {0, 1}.
    """
    values = factor_values(factors)
    n = factors.shape[0]
    centres = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5
    px = centres[None, None, :]  # column (x) of each pixel centre
    py = centres[None, :, None]  # row (y) of each pixel centre
    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))

        def col(name: str, sl: slice = sl) -> np.ndarray:
            return values[name][sl].astype(np.float32)[:, None, None]

        dx, dy = px - col("pos_x"), py - col("pos_y")
        cos, sin = np.cos(col("rotation")), np.sin(col("rotation"))
        radius = col("scale") * _MAX_RADIUS
        u = (cos * dx + sin * dy) / radius
        v = (-sin * dx + cos * dy) / radius
        shape = values["shape"][sl]
        block = np.empty((len(shape), IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
        for k in range(len(SHAPE_NAMES)):
            mask = shape == k
            block[mask] = _inside(k, u[mask], v[mask])
        out[sl] = block
    return out


def make_sprites(n: int, seed: int | Sequence[int]) -> Sprites:
    """Generate a seeded data set of ``n`` sprites with their factors.

    Parameters
    ----------
    n : int
        Number of images.
    seed : int or sequence of int
        Seed of the ``numpy`` generator (a sequence, e.g. ``[seed, rank]``, mixes its
        entries): equal seeds give equal data sets.

    Returns
    -------
    sprites : Sprites
        Images and ground-truth factor indices.
    """
    rng = np.random.default_rng(seed)
    factors = sample_factors(n, rng)
    images = torch.from_numpy(render(factors)).unsqueeze(1)
    return Sprites(images=images, factors=factors)
