"""Example tests for every API promise of the README's "Usage", "Semantics (nidl's,
exactly)" and "Bad input" (and the switch of its "Backends"). Values are compared with
``reference/`` in float64."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from _helpers import DEVICE, DISTS, LossInputs, as_distribution, assert_values_match
from torch import nn
from torch.distributions import Bernoulli, Distribution, Laplace, Normal, Poisson

import betavae_triton
from betavae_triton import (
    BetaVAELoss,
    beta_vae_loss,
    kl_normal_loss,
    reconstruction_loss,
)
from betavae_triton import _dispatch as dispatch
from reference import (
    reference_beta_vae_loss,
    reference_kl_normal_loss,
    reference_reconstruction_loss,
)

BACKENDS = pytest.mark.parametrize("backend", ["eager", "triton"])
DIST_PARAM = pytest.mark.parametrize("dist", DISTS)
CLASSES = {"normal": Normal, "laplace": Laplace, "bernoulli": Bernoulli}


def make_inputs(dist: str = "normal", dtype=torch.float64, batch=3, seed=0) -> LossInputs:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 2, 4, generator=gen, dtype=torch.float64)
    p = torch.rand(batch, 2, 4, generator=gen, dtype=torch.float64)
    if dist == "bernoulli":
        x = x.round()
    else:
        p = 3 * p - 1
    loc = torch.randn(batch, 5, generator=gen, dtype=torch.float64)
    scale = torch.rand(batch, 5, generator=gen, dtype=torch.float64) + 0.2
    return LossInputs(dist, *(t.to(DEVICE, dtype) for t in (x, p, loc, scale)))


# ---- section 1: the module and its methods ----------------------------------------------


def test_is_an_nn_module_with_nidls_defaults():
    loss_fn = BetaVAELoss()
    assert isinstance(loss_fn, nn.Module)
    assert loss_fn.beta == 4.0 and loss_fn.default_dist == "normal"
    assert list(loss_fn.parameters()) == [] and loss_fn.state_dict() == {}
    assert "beta=4.0" in repr(loss_fn)
    loss_fn = BetaVAELoss(0.5, "bernoulli", backend="eager", validate_args=False)
    assert (loss_fn.beta, loss_fn.default_dist, loss_fn.backend) == (0.5, "bernoulli", "eager")
    assert betavae_triton.__all__ and {"BetaVAELoss", "beta_vae_loss"} <= set(
        betavae_triton.__all__
    )


@DIST_PARAM
def test_forward_returns_nidls_dict(dist):
    inputs = make_inputs(dist)
    out = BetaVAELoss(beta=2.0, default_dist=dist)(inputs.x, inputs.p, _q(inputs))
    assert isinstance(out, dict)
    assert set(out) == {"rec_loss", "kl_loss", "loss"}
    assert_values_match((out["loss"], out["rec_loss"], out["kl_loss"]), inputs, 2.0)


def _q(inputs: LossInputs) -> Normal:
    return Normal(inputs.q_loc, inputs.q_scale)


def test_hand_computed_values():
    """Small numbers worked out by hand: the loss adds beta * kl (nidl's code, not its page)."""
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64, device=DEVICE)
    p = torch.zeros(2, 2, dtype=torch.float64, device=DEVICE)
    loc = torch.tensor([[1.0], [0.0]], dtype=torch.float64, device=DEVICE)
    q = Normal(loc, torch.ones(2, 1, device=DEVICE).double())
    # rec = (1 + 4) / 2 (normal), (1 + 2) / 2 (laplace); kl = (½·1 + 0) / 2 = 0.25.
    for dist, rec in (("normal", 2.5), ("laplace", 1.5)):
        out = BetaVAELoss(beta=4.0, default_dist=dist)(x, p, q)
        assert out["rec_loss"].item() == pytest.approx(rec, rel=1e-12)
        assert out["kl_loss"].item() == pytest.approx(0.25, rel=1e-12)
        assert out["loss"].item() == pytest.approx(rec + 4.0 * 0.25, rel=1e-12)
        ref = reference_beta_vae_loss(x.cpu(), p.cpu(), q.loc.cpu(), q.scale.cpu(), 4.0, dist)
        assert [r.item() for r in ref] == pytest.approx([rec + 1.0, rec, 0.25], rel=1e-12)
    # bernoulli: x = 1 with p = ½ costs log 2; p = 0 with x = 1 costs 100 (the clamp).
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64, device=DEVICE)
    p = torch.tensor([[0.5, 0.0], [0.0, 1.0]], dtype=torch.float64, device=DEVICE)
    rec = BetaVAELoss(default_dist="bernoulli").reconstruction_loss(p, x)
    expected = (math.log(2.0) + 100.0) / 2
    assert rec.item() == pytest.approx(expected, rel=1e-12)
    ref = reference_reconstruction_loss(p.cpu(), x.cpu(), "bernoulli")
    assert ref.item() == pytest.approx(expected)


@DIST_PARAM
def test_reconstruction_loss_method(dist):
    inputs = make_inputs(dist)
    expected = reference_reconstruction_loss(inputs.p, inputs.x, dist)
    loss_fn = BetaVAELoss(default_dist=dist)
    torch.testing.assert_close(loss_fn.reconstruction_loss(inputs.p, inputs.x), expected)
    p_dist = as_distribution(inputs.p, dist)
    # The distribution's type wins over default_dist.
    other = BetaVAELoss(default_dist="laplace" if dist != "laplace" else "normal")
    torch.testing.assert_close(other.reconstruction_loss(p_dist, inputs.x), expected)
    torch.testing.assert_close(reconstruction_loss(inputs.p, inputs.x, dist), expected)


def test_decoder_scale_is_ignored():
    inputs = make_inputs("normal")
    loss_fn = BetaVAELoss()
    wide = Normal(inputs.p, 7 * torch.ones_like(inputs.p))
    torch.testing.assert_close(
        loss_fn.reconstruction_loss(wide, inputs.x),
        reference_reconstruction_loss(inputs.p, inputs.x, "normal"),
    )


def test_kl_normal_loss_method():
    inputs = make_inputs()
    expected = reference_kl_normal_loss(inputs.q_loc, inputs.q_scale)
    torch.testing.assert_close(BetaVAELoss().kl_normal_loss(_q(inputs)), expected)
    torch.testing.assert_close(kl_normal_loss(inputs.q_loc, inputs.q_scale), expected)
    # = kl_divergence(q, Normal(0, 1)).mean(dim=0).sum(), also when q broadcasts.
    q = Normal(inputs.q_loc, torch.tensor(0.7, dtype=torch.float64, device=DEVICE))
    expected = torch.distributions.kl_divergence(q, Normal(0.0, 1.0)).mean(dim=0).sum()
    torch.testing.assert_close(BetaVAELoss().kl_normal_loss(q), expected)


@DIST_PARAM
def test_parse_distribution(dist):
    loss_fn = BetaVAELoss(default_dist=dist)
    for other in DISTS:
        obj = as_distribution(make_inputs(other).p, other)
        assert loss_fn._parse_distribution(obj) is obj
    p = make_inputs(dist).p
    parsed = loss_fn._parse_distribution(p)
    assert type(parsed) is CLASSES[dist]
    if dist == "bernoulli":
        torch.testing.assert_close(parsed.probs, p)
    else:
        torch.testing.assert_close(parsed.loc, p)
        torch.testing.assert_close(parsed.scale, torch.ones_like(p))
    with pytest.raises(TypeError):
        loss_fn._parse_distribution([0.5, 0.5])


@DIST_PARAM
@pytest.mark.parametrize("as_dist", [False, True], ids=["p_tensor", "p_distribution"])
def test_p_as_tensor_or_distribution(dist, as_dist):
    inputs = make_inputs(dist)
    p = as_distribution(inputs.p, dist) if as_dist else inputs.p
    default = "laplace" if as_dist and dist != "laplace" else dist
    out = BetaVAELoss(beta=1.5, default_dist=default)(inputs.x, p, _q(inputs))
    assert_values_match((out["loss"], out["rec_loss"], out["kl_loss"]), inputs, 1.5)


def test_beta_can_be_changed_after_construction():
    inputs = make_inputs()
    loss_fn = BetaVAELoss(beta=1.0)
    loss_fn.beta = 0.25
    out = loss_fn(inputs.x, inputs.p, _q(inputs))
    assert_values_match((out["loss"], out["rec_loss"], out["kl_loss"]), inputs, 0.25)


def test_functional_defaults_are_nidls():
    inputs = make_inputs("normal")
    values = beta_vae_loss(*inputs.tensors)  # beta=4.0, dist="normal"
    assert_values_match(values, inputs, 4.0)


@BACKENDS
def test_gradients_reach_every_input(backend):
    inputs = make_inputs("laplace", torch.float32)
    x, p, loc, scale = inputs.leaves()
    out = BetaVAELoss(default_dist="laplace", backend=backend)(
        x, Laplace(p, torch.ones_like(p)), Normal(loc, scale)
    )
    out["loss"].backward()
    for t in (x, p, loc, scale):
        assert t.grad is not None and t.grad.shape == t.shape and t.grad.abs().sum() > 0


@BACKENDS
@pytest.mark.parametrize(
    ("data_dtype", "q_dtype"),
    [
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float64),
        (torch.float32, torch.float16),
    ],
)
def test_result_dtypes(backend, data_dtype, q_dtype):
    """rec in p's/x's dtype, kl in q's, loss in the two promoted (as nidl's code gives)."""
    inputs = make_inputs("normal", torch.float32)
    x, p = inputs.x.to(data_dtype), inputs.p.to(data_dtype)
    q = Normal(inputs.q_loc.to(q_dtype), inputs.q_scale.to(q_dtype))
    out = BetaVAELoss(backend=backend)(x, p, q)
    assert out["rec_loss"].dtype == data_dtype
    assert out["kl_loss"].dtype == q_dtype
    assert out["loss"].dtype == torch.promote_types(data_dtype, q_dtype)
    mixed = LossInputs("normal", x, p, q.loc, q.scale)
    assert_values_match((out["loss"], out["rec_loss"], out["kl_loss"]), mixed, 4.0)


# ---- section 1 and 5: bad input -----------------------------------------------------------


def test_unknown_default_dist_is_refused_at_construction():
    with pytest.raises(ValueError, match="poisson"):
        BetaVAELoss(default_dist="poisson")
    inputs = make_inputs()
    with pytest.raises(ValueError):
        beta_vae_loss(*inputs.tensors, dist="gaussian")
    with pytest.raises(ValueError):
        reconstruction_loss(inputs.p, inputs.x, "bernouilli")


@pytest.mark.parametrize("bad_p", [[0.5], "normal", None, 3.0], ids=repr)
def test_p_of_unsupported_type_is_a_type_error(bad_p):
    inputs = make_inputs()
    with pytest.raises(TypeError):
        BetaVAELoss()(inputs.x, bad_p, _q(inputs))
    with pytest.raises(TypeError):
        BetaVAELoss()._parse_distribution(bad_p)


def test_unsupported_distributions_are_type_errors():
    inputs = make_inputs()
    loss_fn = BetaVAELoss()
    poisson = Poisson(inputs.p.abs() + 0.1)
    with pytest.raises(TypeError):
        loss_fn.reconstruction_loss(poisson, inputs.x)
    with pytest.raises(TypeError):
        loss_fn(inputs.x, poisson, _q(inputs))
    with pytest.raises(TypeError):
        loss_fn._parse_distribution(poisson)
    laplace_q = Laplace(inputs.q_loc, inputs.q_scale)
    with pytest.raises(TypeError):
        loss_fn.kl_normal_loss(laplace_q)
    with pytest.raises(TypeError):
        loss_fn(inputs.x, inputs.p, laplace_q)
    with pytest.raises(TypeError):
        loss_fn(inputs.x, inputs.p, (inputs.q_loc, inputs.q_scale))


@pytest.mark.parametrize(
    ("p_shape", "x_shape"),
    [((3, 2, 4), (3, 2, 5)), ((1, 8), (3, 8)), ((3, 8), (3, 1)), ((3, 8), (3, 2, 4))],
)
def test_shape_mismatch_names_both_shapes(p_shape, x_shape):
    p, x = torch.rand(p_shape, device=DEVICE), torch.rand(x_shape, device=DEVICE)
    q = Normal(torch.zeros(3, 2, device=DEVICE), torch.ones(3, 2, device=DEVICE))
    for call in (
        lambda: BetaVAELoss()(x, p, q),
        lambda: BetaVAELoss().reconstruction_loss(p, x),
        lambda: beta_vae_loss(x, p, q.loc, q.scale),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert str(p_shape) in str(info.value) and str(x_shape) in str(info.value)


def test_posterior_that_does_not_broadcast_is_a_value_error():
    inputs = make_inputs()
    with pytest.raises(ValueError):
        beta_vae_loss(
            inputs.x,
            inputs.p,
            torch.zeros(3, 4, dtype=torch.float64, device=DEVICE),
            torch.ones(3, 5, dtype=torch.float64, device=DEVICE),
        )


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
@pytest.mark.parametrize("where", ["x", "p", "q_loc", "q_scale"])
def test_integer_and_boolean_tensors_are_type_errors(dtype, where):
    inputs = make_inputs("bernoulli", torch.float32)
    tensors = dict(zip(("x", "p", "q_loc", "q_scale"), inputs.tensors, strict=True))
    tensors[where] = tensors[where].round().to(dtype)
    with pytest.raises(TypeError):
        beta_vae_loss(*tensors.values(), dist="bernoulli")
    if where in ("x", "p"):
        with pytest.raises(TypeError):
            BetaVAELoss(default_dist="bernoulli").reconstruction_loss(tensors["p"], tensors["x"])
    else:
        with pytest.raises(TypeError):
            kl_normal_loss(tensors["q_loc"], tensors["q_scale"])


@pytest.mark.parametrize("where", ["x", "p", "q", "q_scale"])
def test_tensors_on_different_devices_are_value_errors(where):
    # The "meta" device stands in for a second device (there may be no GPU).
    inputs = make_inputs("normal", torch.float32)
    x, p, loc, scale = inputs.tensors
    meta = torch.device("meta")
    if where == "x":
        x = x.to(meta)
    elif where == "p":
        p = p.to(meta)
    elif where == "q":
        loc, scale = loc.to(meta), scale.to(meta)
    else:
        scale = scale.to(meta)
    with pytest.raises(ValueError, match="meta"):
        beta_vae_loss(x, p, loc, scale)
    if where != "q_scale":
        with pytest.raises(ValueError, match="meta"):
            BetaVAELoss()(x, p, Normal(loc, scale, validate_args=False))


def test_empty_batch_is_a_value_error():
    x = torch.rand(0, 3, device=DEVICE)
    q = Normal(torch.zeros(0, 2, device=DEVICE), torch.ones(0, 2, device=DEVICE))
    with pytest.raises(ValueError, match="empty"):
        BetaVAELoss()(x, x.clone(), q)
    with pytest.raises(ValueError):
        BetaVAELoss().reconstruction_loss(x.clone(), x)
    with pytest.raises(ValueError):
        BetaVAELoss().kl_normal_loss(q)
    inputs = make_inputs()
    with pytest.raises(ValueError):
        beta_vae_loss(
            inputs.x,
            inputs.p,
            torch.zeros(0, 2, dtype=torch.float64, device=DEVICE),
            torch.ones(0, 2, dtype=torch.float64, device=DEVICE),
        )
    scalar = torch.tensor(1.0, device=DEVICE)
    with pytest.raises(ValueError):
        beta_vae_loss(scalar, scalar.clone(), inputs.q_loc, inputs.q_scale)


BAD_BERNOULLI = {
    "p_above_1": ([[1.0, 0.0, 1.0]], [[1.5, 0.5, 0.5]]),
    "p_below_0": ([[1.0, 0.0, 1.0]], [[0.5, -0.25, 0.5]]),
    "x_above_1": ([[2.0, 0.0, 1.0]], [[0.5, 0.5, 0.5]]),
    "x_below_0": ([[1.0, -0.5, 1.0]], [[0.5, 0.3, 0.5]]),
}


def _bad_bernoulli(case: str):
    x, p = (torch.tensor(v, device=DEVICE) for v in BAD_BERNOULLI[case])
    return x, p, torch.zeros(1, 2, device=DEVICE), torch.ones(1, 2, device=DEVICE)


@BACKENDS
@pytest.mark.parametrize("case", sorted(BAD_BERNOULLI))
def test_bernoulli_out_of_range_is_a_value_error_when_validating(backend, case, restore_validation):
    x, p, loc, scale = _bad_bernoulli(case)
    loss_fn = BetaVAELoss(default_dist="bernoulli", backend=backend)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        loss_fn(x, p, Normal(loc, scale))
    with pytest.raises(ValueError):
        loss_fn.reconstruction_loss(p, x)
    with pytest.raises(ValueError):
        beta_vae_loss(x, p, loc, scale, dist="bernoulli", backend=backend)
    with pytest.raises(ValueError):
        BetaVAELoss(default_dist="bernoulli", validate_args=True, backend=backend)(
            x, p, Normal(loc, scale)
        )


@BACKENDS
@pytest.mark.parametrize("case", sorted(BAD_BERNOULLI))
def test_bernoulli_out_of_range_is_nan_without_validation(backend, case, restore_validation):
    x, p, loc, scale = _bad_bernoulli(case)
    q = Normal(loc, scale)
    out = BetaVAELoss(default_dist="bernoulli", validate_args=False, backend=backend)(x, p, q)
    assert out["rec_loss"].isnan() and out["loss"].isnan() and out["kl_loss"].item() == 0
    loss, rec, _ = beta_vae_loss(x, p, loc, scale, 1.0, "bernoulli", backend, validate_args=False)
    assert loss.isnan() and rec.isnan()
    # validate_args=None follows torch.distributions' global default.
    Distribution.set_default_validate_args(False)
    out = BetaVAELoss(default_dist="bernoulli", backend=backend)(x, p, q)
    assert out["rec_loss"].isnan() and out["loss"].isnan()
    rec = reconstruction_loss(p, x, "bernoulli", backend)
    assert rec.isnan()
    # An explicit validate_args=True still checks.
    with pytest.raises(ValueError):
        BetaVAELoss(default_dist="bernoulli", validate_args=True, backend=backend)(x, p, q)


def test_validation_default_is_restored(restore_validation):
    # Guards the fixture: whatever ran before in this process (a test that turned the
    # default off, a torch.compile), a test that asks for it starts with the default on.
    assert Distribution._validate_args


def test_the_first_torch_compile_switches_the_validation_default_off():
    """PyTorch's behaviour that the README's "Bad input" states, and the reason for the
    fixture above: in a fresh process the default is on until the first ``torch.compile``."""
    code = (
        "import torch\n"
        "from torch.distributions import Distribution\n"
        "before = Distribution._validate_args\n"
        "torch.compile(lambda t: t + 1)\n"
        "print(before, Distribution._validate_args)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "False"]


def _with_special(inputs: LossInputs, where: str, value: float) -> LossInputs:
    tensors = dict(zip(("x", "p", "q_loc", "q_scale"), inputs.tensors, strict=True))
    t = tensors[where].clone()
    t.view(-1)[1] = value
    tensors[where] = t
    return LossInputs(inputs.dist, *tensors.values())


@BACKENDS
@DIST_PARAM
@pytest.mark.parametrize("where", ["x", "p", "q_loc", "q_scale"])
def test_nan_inputs_propagate(backend, dist, where):
    inputs = _with_special(make_inputs(dist, torch.float32), where, float("nan"))
    loss, rec, kl = beta_vae_loss(*inputs.tensors, beta=1.0, dist=dist, backend=backend)
    assert loss.isnan()
    assert (rec.isnan() if where in ("x", "p") else kl.isnan()).item()
    if dist != "bernoulli" or where not in ("x", "p"):
        # (the reference's binary_cross_entropy refuses NaN probabilities)
        ref = reference_beta_vae_loss(*inputs.tensors, 1.0, dist)
        assert [bool(v.isnan()) for v in (loss, rec, kl)] == [bool(r.isnan()) for r in ref]


@BACKENDS
@pytest.mark.parametrize(
    ("dist", "where", "value"),
    [
        ("normal", "p", float("inf")),
        ("normal", "x", float("-inf")),
        ("laplace", "p", float("-inf")),
        ("laplace", "x", float("inf")),
        ("normal", "q_loc", float("inf")),
        ("normal", "q_scale", float("inf")),
        ("normal", "q_scale", 0.0),  # −log 0 = inf (validation off: on, σ = 0 is refused)
    ],
)
def test_inf_inputs_propagate_as_in_the_reference(backend, dist, where, value):
    inputs = _with_special(make_inputs(dist, torch.float32), where, value)
    values = beta_vae_loss(
        *inputs.tensors, beta=1.0, dist=dist, backend=backend, validate_args=False
    )
    ref = reference_beta_vae_loss(*inputs.tensors, 1.0, dist)
    for got, expected in zip(values, ref, strict=True):
        assert got.isinf().item() == expected.isinf().item()
        assert got.isnan().item() == expected.isnan().item()
        if expected.isinf():
            assert got.item() == expected.item()
    assert not values[0].isfinite()


# ---- section 3: backends -------------------------------------------------------------------


def test_eager_backend_works():
    inputs = make_inputs()
    loss_fn = BetaVAELoss(beta=2.0, backend="eager")
    assert loss_fn.backend == "eager"
    out = loss_fn(inputs.x, inputs.p, _q(inputs))
    assert_values_match((out["loss"], out["rec_loss"], out["kl_loss"]), inputs, 2.0)
    values = beta_vae_loss(*inputs.tensors, 2.0, "normal", backend="eager")
    assert_values_match(values, inputs, 2.0)


def test_unknown_backend_is_a_value_error():
    inputs = make_inputs()
    with pytest.raises(ValueError, match="cuda"):
        BetaVAELoss(backend="cuda")
    with pytest.raises(ValueError):
        beta_vae_loss(*inputs.tensors, backend="pytorch")
    with pytest.raises(ValueError):
        reconstruction_loss(inputs.p, inputs.x, "normal", "Eager")
    with pytest.raises(ValueError):
        kl_normal_loss(inputs.q_loc, inputs.q_scale, "gpu")


def test_auto_is_the_default_and_eager_on_cpu(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert BetaVAELoss().backend == "auto"
    assert dispatch.resolve_backend("auto", torch.device("cpu")) == "eager"


def test_environment_variable_sets_the_default(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "eager")
    assert BetaVAELoss().backend == "eager"
    monkeypatch.setenv(dispatch.ENV_VAR, " Eager ")
    assert BetaVAELoss().backend == "eager"
    # An explicit backend wins over the variable.
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    assert BetaVAELoss(backend="eager").backend == "eager"
    assert BetaVAELoss().backend == "triton"
    monkeypatch.delenv(dispatch.ENV_VAR)
    assert BetaVAELoss().backend == "auto"


def test_environment_variable_reaches_the_functions(monkeypatch):
    # With the variable at "triton" and no interpreter, CPU tensors are refused: proof that
    # the functions read it.
    inputs = make_inputs("normal", torch.float32)
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    cpu = [t.cpu() for t in inputs.tensors]
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        beta_vae_loss(*cpu)
    with pytest.raises(RuntimeError):
        kl_normal_loss(cpu[2], cpu[3])
    monkeypatch.setenv(dispatch.ENV_VAR, "eager")
    assert_values_match(beta_vae_loss(*cpu), LossInputs(inputs.dist, *cpu), 4.0)


def test_unknown_environment_value_is_a_value_error(monkeypatch):
    inputs = make_inputs()
    monkeypatch.setenv(dispatch.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match=dispatch.ENV_VAR):
        BetaVAELoss()
    with pytest.raises(ValueError, match=dispatch.ENV_VAR):
        beta_vae_loss(*inputs.tensors)
    # An explicit backend does not read the variable.
    assert_values_match(beta_vae_loss(*inputs.tensors, backend="eager"), inputs, 4.0)


def test_triton_on_cpu_without_interpreter_is_a_runtime_error(monkeypatch):
    inputs = make_inputs("normal", torch.float32)
    cpu = [t.cpu() for t in inputs.tensors]
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        beta_vae_loss(*cpu, backend="triton")
    with pytest.raises(RuntimeError):
        BetaVAELoss(backend="triton")(cpu[0], cpu[1], Normal(cpu[2], cpu[3]))
    with pytest.raises(RuntimeError):
        dispatch.resolve_backend("triton", torch.device("cpu"))
    assert dispatch.resolve_backend("auto", torch.device("cpu")) == "eager"


def test_triton_on_cpu_without_interpreter_in_a_fresh_process():
    # The test session runs with TRITON_INTERPRET=1 on CPU; a fresh process without it
    # shows the user-facing behaviour from the first import on.
    code = textwrap.dedent(
        """
        import torch
        from betavae_triton import beta_vae_loss
        x = torch.rand(2, 3)
        try:
            beta_vae_loss(x, x.clone(), torch.zeros(2, 1), torch.ones(2, 1), backend="triton")
        except RuntimeError as err:
            print("RuntimeError:", err)
        else:
            print("no error")
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET",)}
    env.pop(dispatch.ENV_VAR, None)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("RuntimeError:"), result.stdout + result.stderr
    assert "TRITON_INTERPRET" in result.stdout


def test_triton_not_importable_is_a_runtime_error(monkeypatch):
    monkeypatch.setattr(dispatch, "_TRITON_AVAILABLE", False)
    with pytest.raises(RuntimeError, match="triton"):
        dispatch.resolve_backend("triton", torch.device("cpu"))
    with pytest.raises(RuntimeError, match="triton"):
        dispatch.resolve_backend("triton", torch.device("cuda"))
    assert dispatch.resolve_backend("auto", torch.device("cuda")) == "eager"
