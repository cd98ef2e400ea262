"""data.synthetic: random batches made on the device, for model-only throughput (no host input at all).

Owns ``synthetic_batches``: one batch of random 0..255 images and labels created directly on the replicas
(``jax.jit`` with the topology's batch sharding), then yielded again and again at zero input cost.
Must not: touch TensorFlow or files.
"""
from __future__ import annotations

from typing import Iterator

import jax
import jax.numpy as jnp

__all__ = ["synthetic_batches"]


def synthetic_batches(topo, global_batch: int, *, image_size: int = 224, num_classes: int = 1000,
                      dtype=jnp.bfloat16, seed: int = 0) -> Iterator[dict[str, jax.Array]]:
    """Forever: the same device-made ``{"image": [B,S,S,3], "label": [B] int32}`` sharded over replicas."""
    if global_batch % topo.num_replicas:
        raise ValueError(f"synthetic_batches: global_batch {global_batch} must be a multiple of the "
                         f"{topo.num_replicas} replicas")
    sharding = topo.batch_sharding

    def make(key):
        k1, k2 = jax.random.split(key)
        image = jax.random.uniform(k1, (global_batch, image_size, image_size, 3), jnp.float32, 0.0, 255.0)
        label = jax.random.randint(k2, (global_batch,), 0, num_classes, jnp.int32)
        return {"image": image.astype(dtype), "label": label}

    batch = jax.jit(make, out_shardings={"image": sharding, "label": sharding})(jax.random.key(seed))
    while True:
        yield batch
