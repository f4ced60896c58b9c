"""The last step of ``make wheel-check``: run by the clean venv that holds only torch, the
built wheel and the wheel's declared dependencies (never the source tree).

It imports every module of the package but the demo (whose extra is not installed),
computes each loss on CPU tensors, and checks what the wheel ships: the ``py.typed``
marker, the licence file and its SPDX expression. An import of a package that
``pyproject.toml`` does not declare (numpy, say) fails here as it would for a user.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import pkgutil
import sys

import torch
from torch.distributions import Bernoulli, Normal

import betavae_triton

DIST = "betavae-triton"


def main() -> int:
    assert "site-packages" in betavae_triton.__file__, betavae_triton.__file__
    for name in ("numpy", "matplotlib", "tqdm"):
        assert importlib.util.find_spec(name) is None, f"{name} is installed: not a clean venv"
    for module in pkgutil.walk_packages(betavae_triton.__path__, "betavae_triton."):
        if not module.name.startswith("betavae_triton.demo"):
            importlib.import_module(module.name)

    torch.manual_seed(0)  # (for rsample)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=gen).round()
    p = torch.rand(16, 1, 8, 8, generator=gen).clamp(0.05, 0.95).requires_grad_()
    mu = torch.randn(16, 4, generator=gen).requires_grad_()
    sigma = (torch.rand(16, 4, generator=gen) + 0.5).requires_grad_()
    q = Normal(mu, sigma)
    z = q.rsample()
    losses = {
        "BetaVAELoss": betavae_triton.BetaVAELoss(4.0)(x, Bernoulli(probs=p), q)["loss"],
        "beta_vae_loss": betavae_triton.beta_vae_loss(x, p, mu, sigma, dist="bernoulli")[0],
        "CapacityBetaVAELoss": betavae_triton.CapacityBetaVAELoss()(x, p, q)["loss"],
        "BetaTCVAELoss": betavae_triton.BetaTCVAELoss(dataset_size=1000)(
            x, Bernoulli(probs=p), q, z
        )["loss"],
    }
    for name, loss in losses.items():
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(mu.grad).all(), name

    # The wheel ships the C kernels' sources (minibatch.c, minibatch_ops.cpp): they build
    # here, against this venv's torch, and ran the β-TCVAE loss above.
    kernels = betavae_triton.tcvae_cpu_kernels()
    assert kernels.path == "c", f"the β-TCVAE C kernels do not build from the wheel: {kernels}"

    files = {str(f) for f in importlib.metadata.files(DIST)}
    assert "betavae_triton/py.typed" in files, "py.typed is not in the wheel"
    assert any(f.endswith("licenses/LICENSE") for f in files), "LICENSE is not in the wheel"
    metadata = importlib.metadata.metadata(DIST)
    assert metadata["License-Expression"] == "BSD-3-Clause", metadata["License-Expression"]
    installed = sorted(d.metadata["Name"] for d in importlib.metadata.distributions())
    print(
        f"wheel-check: betavae-triton {metadata['Version']} imports and runs with torch "
        f"{torch.__version__} and its declared dependencies alone "
        f"(triton available: {betavae_triton.triton_available()}); "
        + ", ".join(f"{k} {v.item():.3f}" for k, v in losses.items())
    )
    print("wheel-check: installed:", " ".join(installed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
