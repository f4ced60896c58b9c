"""The study's model: what a study is (:class:`Study`: a grid of :class:`GridPoint`, the
seeds, the :class:`Budget`), the grids it can take (:data:`PRESETS`, :data:`QUICK`), and
how one run of it is named (:func:`run_key`) and set up (:func:`demo_config`).

Nothing here trains or reads a record: :mod:`.study` runs the grid, :mod:`.study_choice`
scores it, :mod:`.study_report` writes it up.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import LOSS_DEFAULTS, DemoConfig

__all__ = [
    "DEFAULT_OUT",
    "PRESETS",
    "QUICK",
    "TC_PROBE",
    "TC_TRACK_POINTS",
    "Budget",
    "GridPoint",
    "Study",
    "chosen_settings",
    "demo_config",
    "make_grid",
    "run_key",
]

# --grid: the default grid ("paper": batch size, warm-up and estimator, the levers that the
# paper and the demo's first runs point at) and a smaller one for a tighter budget.
PRESETS: dict[str, dict[str, tuple]] = {
    "paper": {
        "batch_sizes": (64, 256, 1024),
        "betas": (6.0,),
        "warmups": (0.0, 0.25),
        "estimators": ("mss", "mws"),
        "banks": (0,),
        "bank_refreshes": (0,),
    },
    "small": {
        "batch_sizes": (64, 256, 1024),
        "betas": (6.0,),
        "warmups": (0.25,),
        "estimators": ("mss",),
        "banks": (0,),
        "bank_refreshes": (0,),
    },
}
# --quick: the tiny sizes of the demo's own tests (tests/test_demo.py), eager.
QUICK = {
    "grid": {
        "batch_sizes": (16,),
        "betas": (6.0,),
        "warmups": (0.0,),
        "estimators": ("mss",),
        "banks": (0,),
        "bank_refreshes": (0,),
    },
    "seeds_select": (0,),
    "seeds_heldout": (1,),
    "budget": {
        "images": 12 * 16,
        "lr": 1e-2,
        "n_train": 256,
        "n_eval": 256,
        "latent_dim": 4,
        "channels": 8,
        "compile": False,
        "tc_probe": (16, 64),
    },
}
# The minibatch sizes at which every run measures the bias of the total correlation's
# estimate (with the grid's batch sizes; those of n_eval sprites or more are skipped).
TC_PROBE = (16, 64, 256, 1024)
# A run with a bank measures the bias of its TC estimate this many times during training
# (DemoConfig.tc_track: every steps // TC_TRACK_POINTS steps).
TC_TRACK_POINTS = 8
# --out: beside the demo's own output (DemoConfig.out), relative to the current folder.
DEFAULT_OUT = Path("demo-output") / "study"


@dataclass(frozen=True)
class GridPoint:
    """One setting of the grid.

    Attributes
    ----------
    loss : str
        ``"betavae"`` or ``"btcvae"``.
    batch_size : int
        Training batch size.
    beta : float
        The KL weight (β-VAE) or the total correlation's weight (β-TCVAE).
    warmup : float
        The KL warm-up's length as a fraction of the run's steps (0: none).
    estimator : str
        The β-TCVAE's estimator of q(z) (``"mss"`` for the β-VAE, where it names only the
        estimator of the ``tc_probe``).
    bank : int
        The β-TCVAE's bank of posteriors (``DemoConfig.bank``; 0: none, and always 0 for
        the β-VAE and "mws").
    bank_refresh : int
        Posteriors of the bank re-encoded per step (``DemoConfig.bank_refresh``; 0: none,
        and always 0 without a bank).
    """

    loss: str
    batch_size: int
    beta: float
    warmup: float
    estimator: str
    bank: int = 0
    bank_refresh: int = 0

    def label(self) -> str:
        """A short readable name, e.g. ``btcvae_b256_beta6_w0.25_mws`` (a bank of K adds
        ``_kK``, its refresh of R ``_rR``)."""
        label = f"{self.loss}_b{self.batch_size}_beta{self.beta:g}_w{self.warmup:g}"
        bank = (f"_k{self.bank}" if self.bank else "") + (
            f"_r{self.bank_refresh}" if self.bank_refresh else ""
        )
        return f"{label}_{self.estimator}{bank}"

    def spec(self) -> dict:
        """The point as a dict, without a zero bank or refresh (so that the runs made
        before either existed keep their names)."""
        spec = asdict(self)
        for name in ("bank", "bank_refresh"):
            if not spec[name]:
                del spec[name]
        return spec


@dataclass(frozen=True)
class Budget:
    """What every run of the study shares.

    Attributes
    ----------
    images : int
        Training images seen per run: ``images // batch_size`` steps.
    lr : float
        Adam's learning rate.
    n_train, n_eval, latent_dim, channels : int
        As in :class:`betavae_triton.demo.DemoConfig`.
    compile : bool
        Run the loss step under ``torch.compile``.
    device : str
        The device of every run.
    tc_probe : tuple of int
        The minibatch sizes of the bias measurement (see ``DemoConfig.tc_probe``).
    """

    images: int = 2000 * 64
    lr: float = 1e-3
    n_train: int = 16384
    n_eval: int = 4096
    latent_dim: int = 10
    channels: int = 32
    compile: bool = True
    device: str = "cpu"
    tc_probe: tuple[int, ...] = TC_PROBE

    def steps(self, batch_size: int) -> int:
        """Training steps at ``batch_size`` for :attr:`images` images (at least 1)."""
        return max(1, self.images // batch_size)


@dataclass(frozen=True)
class Study:
    """The grid, the seeds and the budget of a study, and where it writes.

    Attributes
    ----------
    grid : tuple of GridPoint
        Every setting tried in the selection, in order (a tie goes to the first).
    seeds_select, seeds_heldout : tuple of int
        The seeds of each phase.
    budget : Budget
        What every run shares.
    out : pathlib.Path
        The study's folder: ``runs/`` holds the records, the report sits beside it.
    """

    grid: tuple[GridPoint, ...]
    seeds_select: tuple[int, ...]
    seeds_heldout: tuple[int, ...]
    budget: Budget
    out: Path

    @property
    def runs_dir(self) -> Path:
        """Where the records are."""
        return self.out / "runs"


def make_grid(
    losses: Iterable[str],
    batch_sizes: Iterable[int],
    betas: Iterable[float],
    warmups: Iterable[float],
    estimators: Iterable[str],
    banks: Iterable[int] = (0,),
    bank_refreshes: Iterable[int] = (0,),
) -> tuple[GridPoint, ...]:
    """The product grid, per loss; the β-VAE does not vary the estimator or the bank (it
    has neither), nor "mws" the bank (a bank's weights are "mss"'s); a refresh needs a bank
    at least as large.

    Parameters
    ----------
    losses, batch_sizes, betas, warmups, estimators, banks, bank_refreshes : iterable
        The axes (warm-ups as fractions of the run's steps).

    Returns
    -------
    grid : tuple of GridPoint
        Loss-major, then batch size, β, warm-up, estimator, bank and refresh, in the order
        given.
    """
    points = []
    for loss in losses:
        ests = tuple(estimators) if loss == "btcvae" else ("mss",)
        for b in batch_sizes:
            for beta in betas:
                for w in warmups:
                    for e in ests:
                        ks = tuple(banks) if (loss, e) == ("btcvae", "mss") else (0,)
                        points.extend(
                            GridPoint(loss, b, float(beta), float(w), e, k, r)
                            for k in ks
                            for r in (tuple(bank_refreshes) if k else (0,))
                            if r <= k
                        )
    return tuple(dict.fromkeys(points))


def run_key(point: GridPoint, seed: int, budget: Budget) -> str:
    """The stable name of a run's record: its label, its seed and a hash of all of it.

    Parameters
    ----------
    point : GridPoint
        The setting.
    seed : int
        The run's seed.
    budget : Budget
        The shared settings (a different budget is a different run).

    Returns
    -------
    key : str
        E.g. ``btcvae_b64_beta6_w0_mss_s3_1a2b3c4d5e``: the same for the same run in every
        process and on every machine.
    """
    spec = {"point": point.spec(), "seed": seed, "budget": asdict(budget)}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    return f"{point.label()}_s{seed}_{digest}"


def demo_config(point: GridPoint, seed: int, budget: Budget, out: Path) -> DemoConfig:
    """The demo's settings for one run: no figures, quiet, with the TC probe.

    Parameters
    ----------
    point : GridPoint
        The setting.
    seed : int
        The run's seed (model, data and noise).
    budget : Budget
        The shared settings.
    out : pathlib.Path
        Where the demo writes the run's ``run.json``.

    Returns
    -------
    config : DemoConfig
        ``steps = budget.images // batch_size``, ``kl_warmup`` the warm-up fraction of them;
        with a bank, :data:`TC_TRACK_POINTS` measurements of the TC bias during training.
    """
    steps = budget.steps(point.batch_size)
    return DemoConfig(
        device=budget.device,
        steps=steps,
        loss=point.loss,
        estimator=point.estimator,
        beta=point.beta,
        batch_size=point.batch_size,
        latent_dim=budget.latent_dim,
        out=out,
        seed=seed,
        compile=budget.compile,
        lr=budget.lr,
        kl_warmup=round(point.warmup * steps),
        n_train=budget.n_train,
        n_eval=budget.n_eval,
        channels=budget.channels,
        figures=False,
        quiet=True,
        tc_probe=tuple(sorted({*budget.tc_probe, point.batch_size})),
        bank=point.bank,
        bank_refresh=point.bank_refresh,
        tc_track=max(1, steps // TC_TRACK_POINTS) if point.bank else 0,
    )


def chosen_settings(point: GridPoint, budget: Budget) -> dict:
    """A chosen point as the demo's command-line settings (the keys of ``LOSS_DEFAULTS``)."""
    config = demo_config(point, 0, budget, Path())
    return {key: getattr(config, key) for key in LOSS_DEFAULTS["btcvae"]}
