"""A small beta-VAE trained on procedural sprites with :class:`betavae_triton.BetaVAELoss`
(or the beta-TCVAE's :class:`betavae_triton.BetaTCVAELoss`, ``--loss btcvae``).

Run it with ``python -m betavae_triton.demo`` (``--help`` lists the options), or under
``torchrun --nproc-per-node N -m betavae_triton.demo`` for data-parallel training.

Modules: :mod:`.sprites` (the data), :mod:`.model` (the convolutional VAE), :mod:`.train`
(the loop, DDP, evaluation), :mod:`.mig` (the disentanglement score), :mod:`.plots` (the
figures), :mod:`.__main__` (the command line) and :mod:`.study` (``python -m
betavae_triton.demo.study``: both losses over a grid of batch sizes, warm-ups and
estimators, chosen on some seeds and reported on others).

The demo needs the ``demo`` extra (numpy, matplotlib, tqdm: ``pip install
"betavae-triton[demo]"``). Importing this package does not: :class:`DemoConfig` and
:func:`run` are loaded on first use, so that the commands can say what is missing
(:mod:`._extras`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._extras import demo_extras

if TYPE_CHECKING:
    from .train import DemoConfig, run

__all__ = ["DemoConfig", "run"]


def __getattr__(name: str) -> object:
    """:class:`DemoConfig` and :func:`run`, from :mod:`.train` on first use (PEP 562)."""
    if name in __all__:
        with demo_extras(f"{__name__}.{name}", entry_point=False):
            from . import train
        return getattr(train, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
