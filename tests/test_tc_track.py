"""Tests of the demo's TC bias tracker (``--tc-track``, :mod:`betavae_triton.demo.tc_track`):
that it knows which sprites the loss's bank holds (its ring mirrors the bank's, wrap-around
included), that its estimates are the float64 oracle's on the same posteriors, that a bank
re-encoded by an unchanged model is the bank, and that tracking leaves the training run as
it was. Tiny sizes, eager, one CPU thread.
"""

from __future__ import annotations

import json

import pytest
import torch

from betavae_triton import BetaTCVAELoss
from betavae_triton.demo.__main__ import main, parse_config
from betavae_triton.demo.bank_slots import BankSlots, refresh_bank
from betavae_triton.demo.config import LOSS_DEFAULTS
from betavae_triton.demo.model import ConvVAE
from betavae_triton.demo.sprites import make_sprites
from betavae_triton.demo.tc_track import TCTracker
from reference.beta_tcvae import reference_beta_tcvae_terms

LATENT, CHANNELS = 4, 8
# A bank that is no multiple of the batch: the ring wraps around mid-batch; its most recent
# quarter (9 posteriors) is measured alone too.
BATCH, BANK, N_TRAIN = 8, 36, 128
CHUNKS = 40 // BATCH  # of the 40 held-out sprites


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = ConvVAE(LATENT, CHANNELS).double()
    with torch.no_grad():  # spread the posteriors as training would: a TC far from 0
        for param in model.parameters():
            param.mul_(3.0)
    train = make_sprites(N_TRAIN, seed=[seed, 0, 0]).images.double()
    held_out = make_sprites(40, seed=[seed, 0, 1]).images.double()
    loss_fn = BetaTCVAELoss(
        beta=6.0, dataset_size=N_TRAIN, bank_size=BANK, latent_dim=LATENT, backend="eager"
    ).double()
    tracker = TCTracker(
        every=1,
        eval_images=held_out,
        train_images=train,
        batch_size=BATCH,
        dataset_size=N_TRAIN,
        slots=BankSlots(BANK),
        seed=seed,
    )
    return model, train, loss_fn, tracker


def _push_steps(model, train, loss_fn, tracker, steps, seed=0):
    """``steps`` loss calls in training mode on random batches, each observed."""
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        index = torch.randperm(N_TRAIN, generator=generator)[:BATCH]
        x = train[index]
        with torch.no_grad():
            loc, scale = model.encode(x)
            p = torch.distributions.Bernoulli(logits=model.decode_logits(loc), validate_args=False)
            q = torch.distributions.Normal(loc, scale, validate_args=False)
            loss_fn(x, p, q, loc)
        tracker.slots.push(step, index)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("steps", [1, 2, 4, 5, 9])
def test_tracker_knows_which_sprites_the_bank_holds(steps):
    """After 1 push (the ring filled with copies), 2 and 3 (a wrap-around mid-batch) and 7:
    the posteriors of the sprites the tracker names are the bank's, slot for slot, and the
    bank's mean age is what its pushes give."""
    model, train, loss_fn, tracker = _setup()
    _push_steps(model, train, loss_fn, tracker, steps)
    with torch.no_grad():
        loc, scale = model.encode(train[tracker.slots.index])
    torch.testing.assert_close(loss_fn.bank.loc, loc, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss_fn.bank.scale, scale, rtol=1e-12, atol=1e-12)
    point = tracker.measure(steps - 1, model, loss_fn)
    ages = [steps - s for s in range(steps)]  # updates since each push
    per_slot = [a for a in ages for _ in range(BATCH)][-BANK:]  # the last K pushed
    if steps * BATCH < BANK:  # the first push's copies fill the rest
        per_slot += [steps] * (BANK - steps * BATCH)
    assert point["bank_age"] == pytest.approx(sum(per_slot) / BANK, abs=1e-12)


@pytest.mark.usefixtures("one_thread")
def test_tracked_estimates_are_the_oracles_and_a_re_encoded_bank_is_the_bank():
    """``full`` over every held-out sprite, ``batch`` and ``bank`` as chunk means, and the
    bank's most recent quarter alone: each the float64 oracle's TC on the same samples;
    with the model unchanged since the pushes, the re-encoded bank gives the bank's
    estimate."""
    model, train, loss_fn, tracker = _setup(seed=1)
    _push_steps(model, train, loss_fn, tracker, 4, seed=1)
    point = tracker.measure(3, model, loss_fn)
    with torch.no_grad():
        loc, scale = model.encode(tracker.eval_images)
    noise = torch.randn(loc.shape, generator=torch.Generator().manual_seed(1 * 100_003 + 3),
                        dtype=torch.float64)  # fmt: skip
    z = loc + scale * noise

    def tc(rows: slice, slots: torch.Tensor | None) -> float:
        bank = loss_fn.bank
        extra = (
            {} if slots is None else {"bank_loc": bank.loc[slots], "bank_scale": bank.scale[slots]}
        )
        return float(
            reference_beta_tcvae_terms(z[rows], loc[rows], scale[rows], N_TRAIN, "mss", **extra)[1]
        )

    def chunk_mean(slots: torch.Tensor | None) -> float:
        return sum(tc(slice(s, s + BATCH), slots) for s in range(0, CHUNKS * BATCH, BATCH)) / CHUNKS

    everything = torch.arange(BANK)
    recent = (loss_fn.bank.next - BANK // 4 + torch.arange(BANK // 4)) % BANK
    assert point["full"] == pytest.approx(tc(slice(0, 40), None), abs=1e-9)
    assert point["batch"] == pytest.approx(chunk_mean(None), abs=1e-9)
    assert point["bank"] == pytest.approx(chunk_mean(everything), abs=1e-9)
    assert point["fresh"] == pytest.approx(point["bank"], abs=1e-9)
    (part,) = point["sub_banks"]
    assert part["size"] == BANK // 4
    assert part["bank"] == pytest.approx(chunk_mean(recent), abs=1e-9)
    assert part["fresh"] == pytest.approx(part["bank"], abs=1e-9)
    assert part["bank_age"] == pytest.approx((8 * 1 + 1 * 2) / 9, abs=1e-12)  # 4 pushes of 8
    assert point["batch"] != pytest.approx(point["bank"], abs=1e-6)  # the bank counts
    assert part["bank"] != pytest.approx(point["bank"], abs=1e-6)  # and its part differs


@pytest.mark.usefixtures("one_thread")
def test_a_refresh_re_encodes_the_stalest_posteriors_with_the_current_model():
    """After 5 pushes of 8 into 36 slots (the first push's copies in 4 slots are the
    stalest), the model changes; a refresh of 12 rewrites those 4 and the 8 of the second
    push with the new model's posteriors of their sprites, and leaves the rest as pushed."""
    model, train, loss_fn, tracker = _setup(seed=2)
    _push_steps(model, train, loss_fn, tracker, 5, seed=2)
    slots = tracker.slots
    before_loc = loss_fn.bank.loc.clone()
    written = slots.written.clone()
    assert sorted(written.tolist()) == [0] * 4 + [1] * 8 + [2] * 8 + [3] * 8 + [4] * 8
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1)
    refresh_bank(loss_fn, slots, model, train, 12, step=4)
    stalest = (written <= 1).nonzero().flatten()
    with torch.no_grad():
        loc, scale = model.encode(train[slots.index[stalest]])
    torch.testing.assert_close(loss_fn.bank.loc[stalest], loc, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss_fn.bank.scale[stalest], scale, rtol=1e-12, atol=1e-12)
    kept = (written > 1).nonzero().flatten()
    torch.testing.assert_close(loss_fn.bank.loc[kept], before_loc[kept], rtol=0, atol=0)
    assert slots.written[stalest].tolist() == [5] * 12
    assert slots.age(torch.arange(BANK), 4) == pytest.approx((12 * 0 + 8 * 3 + 8 * 2 + 8 * 1) / 36)


TINY = [
    "--loss", "btcvae", "--steps", "6", "--n-train", "128", "--n-eval", "64",
    "--batch-size", "16", "--latent-dim", str(LATENT), "--channels", str(CHANNELS),
    "--no-compile", "--lr", "1e-2", "--bank", "32",
]  # fmt: skip


@pytest.mark.usefixtures("one_thread")
def test_tracking_leaves_the_training_run_as_it_was(tmp_path, capsys):
    """The tracker draws its samples from a generator of its own: with and without
    ``--tc-track`` the run's losses are the same at every step; tracked, run.json holds a
    measurement every 2 steps, each with the bank."""
    runs = {}
    for every in (0, 2):
        out = tmp_path / f"track{every}"
        assert main([*TINY, "--tc-track", str(every), "--out", str(out)]) == 0
        runs[every] = json.loads((out / "run.json").read_text())
    assert runs[0]["curves"] == runs[2]["curves"]
    assert "tc_track" not in runs[0]
    track = runs[2]["tc_track"]
    assert (track["bank_size"], track["batch_size"], track["held_out"]) == (32, 16, 64)
    assert [p["step"] for p in track["points"]] == [2, 4, 6]
    assert all(p["bank"] is not None and p["fresh"] is not None for p in track["points"])
    assert runs[2]["tcvae"]["bank_size"] == 32


@pytest.mark.usefixtures("one_thread")
def test_a_bank_refreshed_whole_every_step_is_the_bank_re_encoded(tmp_path):
    """With ``--bank-refresh K`` every posterior of the bank is re-encoded after each
    update: the tracked bank is as old as the model (age 0) and its estimate is the
    re-encoded bank's; the refresh changes the run (the loss sees fresher posteriors)."""
    runs = {}
    for refresh in (0, 32):
        out = tmp_path / f"refresh{refresh}"
        argv = [*TINY, "--tc-track", "2", "--bank-refresh", str(refresh), "--out", str(out)]
        assert main(argv) == 0
        runs[refresh] = json.loads((out / "run.json").read_text())
    points = runs[32]["tc_track"]["points"]
    assert [p["bank_age"] for p in points] == [0.0, 0.0, 0.0]
    for p in points:
        assert p["bank"] == pytest.approx(p["fresh"], abs=1e-9)
    assert runs[32]["tcvae"]["bank_refresh"] == 32
    assert all(p["bank_age"] > 0 for p in runs[0]["tc_track"]["points"])
    assert runs[0]["curves"]["loss"][0] == runs[32]["curves"]["loss"][0]  # no bank yet
    assert runs[0]["curves"]["loss"][1] != runs[32]["curves"]["loss"][1]


def test_a_refresh_under_several_processes_is_refused():
    from betavae_triton.demo.config import DistInfo
    from betavae_triton.demo.train import _bank_slots

    config = parse_config([*TINY, "--bank-refresh", "8"])
    assert isinstance(_bank_slots(config, DistInfo()), BankSlots)
    with pytest.raises(ValueError, match="--bank-refresh re-encodes the bank's sprites in one"):
        _bank_slots(config, DistInfo(world_size=2))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bank", "32"], "--bank and --tc-track need --loss btcvae"),
        (["--tc-track", "5"], "--bank and --tc-track need --loss btcvae"),
        (["--loss", "btcvae", "--estimator", "mws", "--bank", "32"], "--bank needs --estimator"),
        (
            ["--loss", "btcvae", "--n-train", "256", "--batch-size", "64", "--bank", "250"],
            "exceed --n-train 256",
        ),
        (["--loss", "btcvae", "--bank", "-1"], "--bank: must be a non-negative integer"),
        (
            ["--loss", "btcvae", "--n-train", "512", "--bank", "32", "--bank-refresh", "40"],
            "--bank-refresh 40 needs a --bank of at least as many posteriors (--bank 32)",
        ),
        (["--loss", "btcvae", "--bank", "0", "--bank-refresh", "8"], "(--bank 0)"),
    ],
)
def test_bad_bank_options_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_default_bank_yields_to_the_options_given():
    """``--loss btcvae`` brings the study's bank; with mws, or sprites too few for it, the
    default bank is dropped (an explicit ``--bank`` is kept, and checked)."""
    bank = LOSS_DEFAULTS["btcvae"]["bank"]
    assert bank > 0 and parse_config(["--loss", "btcvae"]).bank == bank
    assert parse_config(["--loss", "btcvae", "--estimator", "mws"]).bank == 0
    assert parse_config(["--loss", "btcvae", "--estimator", "mws"]).bank_refresh == 0
    given = parse_config(["--loss", "btcvae", "--bank", "1024"])
    assert (given.bank, given.bank_refresh) == (1024, 0)  # the default refresh: default bank's
    assert parse_config(["--loss", "btcvae", "--n-train", str(bank)]).bank == 0
    assert parse_config(["--loss", "btcvae", "--n-train", "512", "--bank", "100"]).bank == 100
    assert parse_config(["--bank", "0"]).bank == 0


def test_the_default_refresh_yields_to_torchrun(monkeypatch):
    """Under torchrun (WORLD_SIZE > 1) the default bank stays and its refresh, which one
    process alone can do, is dropped; a refresh given is kept (and refused at the run)."""
    defaults = LOSS_DEFAULTS["btcvae"]
    assert defaults["bank_refresh"] > 0
    assert parse_config(["--loss", "btcvae"]).bank_refresh == defaults["bank_refresh"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = parse_config(["--loss", "btcvae"])
    assert (config.bank, config.bank_refresh) == (defaults["bank"], 0)
    assert parse_config(["--loss", "btcvae", "--bank-refresh", "64"]).bank_refresh == 64


def test_the_bank_option_reaches_the_loss():
    from betavae_triton.demo.config import DistInfo
    from betavae_triton.demo.losses import make_train_loss

    config = parse_config(["--loss", "btcvae", "--bank", "4096", "--latent-dim", "6"])
    loss_fn = make_train_loss(config, DistInfo())
    assert (loss_fn.bank.size, loss_fn.bank.latent_dim) == (4096, 6)
    no_bank = parse_config(["--loss", "btcvae", "--bank", "0"])
    assert make_train_loss(no_bank, DistInfo()).bank is None
