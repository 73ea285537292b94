"""ghostnet_jax: the GhostNet family (V1, V2, V3) in JAX/Flax NNX, exact to the reference, with training."""
