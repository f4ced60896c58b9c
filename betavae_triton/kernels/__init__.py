"""Triton kernels for the beta-VAE loss.

One idea per kernel:

- :mod:`.reconstruction`: Σ ℓ(p, x) over a flat tile range and, in the same pass, the
  per-element gradients d ℓ / dp and d ℓ / dx (unscaled by the incoming gradient);
- :mod:`.kl`: Σ KL(N(μ, σ²) ‖ N(0, 1)) and its gradients in the same pass;
- :mod:`.finalize`: the fixed-order sum of the per-program partials into rec, kl, loss;
- :mod:`.scale`: the backward pass's scaling of the saved gradients by the incoming
  gradient, read on the device (and skipped, on the device, when that scale is 1).
"""
