"""Triton kernels for the beta-VAE loss.

One idea per kernel:

- :mod:`.reconstruction`: Σ ℓ(p, x) per row (the whole batch, or one sample) and, in the
  same pass, the per-element gradients d ℓ / dp, d ℓ / dx and, with a learned decoder
  scale, d ℓ / ds (not yet rescaled by the incoming gradient);
- :mod:`.kl`: Σ KL(N(μ, σ²) ‖ N(0, 1)) per row and its gradients in the same pass (σ or
  log σ²);
- :mod:`.finalize`: the fixed-order sum of the per-program partials into loss, rec, kl;
- :mod:`.tiling`: the row-and-tile addressing the two reductions share (64-bit on demand);
- :mod:`.rescale`: the backward pass's rescaling of the saved gradients by the incoming
  gradient, read on the device (and skipped, on the device, when that factor is 1);
- :mod:`.constants`: the modes and numbers they share with the eager path, by name.
"""
