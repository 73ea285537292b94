"""ghostnet_jax: the GhostNet family (V1, V2, V3) in JAX/Flax NNX, exact to the reference, with training."""

from ghostnet_jax.backends import cpu_only_without_tpu

cpu_only_without_tpu()
