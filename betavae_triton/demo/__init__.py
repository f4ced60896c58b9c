"""A small beta-VAE trained on procedural sprites with :class:`betavae_triton.BetaVAELoss`
(or the beta-TCVAE's :class:`betavae_triton.BetaTCVAELoss`, ``--loss btcvae``).

Run it with ``python -m betavae_triton.demo`` (``--help`` lists the options), or under
``torchrun --nproc-per-node N -m betavae_triton.demo`` for data-parallel training.

Modules: :mod:`.sprites` (the data), :mod:`.model` (the convolutional VAE), :mod:`.train`
(the loop, DDP, evaluation), :mod:`.mig` (the disentanglement score), :mod:`.plots` (the
figures), :mod:`.__main__` (the command line) and :mod:`.study` (``python -m
betavae_triton.demo.study``: both losses over a grid of batch sizes, warm-ups and
estimators, chosen on some seeds and reported on others).
"""

from .train import DemoConfig, run

__all__ = ["DemoConfig", "run"]
