"""A small beta-VAE trained on procedural sprites with :class:`betavae_triton.BetaVAELoss`
(or the beta-TCVAE's :class:`betavae_triton.BetaTCVAELoss`, ``--loss btcvae``).

Run it with ``python -m betavae_triton.demo`` (``--help`` lists the options), or under
``torchrun --nproc-per-node N -m betavae_triton.demo`` for data-parallel training.

Modules, one idea each:

- a run: :mod:`.config` (its settings, :class:`DemoConfig`), :mod:`.sprites` (the data),
  :mod:`.model` (the convolutional VAE), :mod:`.losses` (the losses, the compiled step's
  function, the KL warm-up), :mod:`.train` (:func:`run`: device, DDP, the training
  loop), :mod:`.evaluate` (held-out evaluation, the TC probe), :mod:`.mig` (the
  disentanglement score), :mod:`.report` (``run.json``, the printed summary) and
  :mod:`.plots` (the figures);
- the commands: :mod:`.options` (the options both commands share, defined once),
  :mod:`.__main__` (``python -m betavae_triton.demo``), :mod:`.files` (JSON written
  whole, also for ``perf/``) and :mod:`._extras` (the demo extra's error);
- the study (``python -m betavae_triton.demo.study``: both losses over a grid of batch
  sizes, warm-ups and estimators, chosen on some seeds and reported on others):
  :mod:`.study` (the command and its resumable runner), :mod:`.study_grid` (the grid,
  the budget, the run keys), :mod:`.study_choice` (the statistics and the choice),
  :mod:`.study_report` (``study.json``, ``study.md``, its figures, the README block) and
  :mod:`.study_cli` (its command line).

The demo needs the ``demo`` extra (numpy, matplotlib, tqdm: ``pip install
"betavae-triton[demo]"``). Importing this package does not: :class:`DemoConfig` and
:func:`run` are loaded on first use, so that the commands can say what is missing
(:mod:`._extras`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._extras import demo_extras

if TYPE_CHECKING:
    from .config import DemoConfig
    from .train import run

__all__ = ["DemoConfig", "run"]
# Where each name lives.
_HOMES = {"DemoConfig": "config", "run": "train"}


def __getattr__(name: str) -> object:
    """:class:`DemoConfig` from :mod:`.config` and :func:`run` from :mod:`.train`, on first
    use (PEP 562)."""
    if name in _HOMES:
        with demo_extras(f"{__name__}.{name}", entry_point=False):
            module = importlib.import_module(f".{_HOMES[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
