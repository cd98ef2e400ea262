"""labkit.data.synthetic: device-made batches, sharded over the replicas, labels in range."""
import jax.numpy as jnp
import numpy as np
import pytest

from labkit.data.synthetic import synthetic_batches
from labkit.mesh import Topology


def test_synthetic_batches_live_on_the_replicas():
    topo = Topology.build(shape=(2, 4), bn_group=2)
    it = synthetic_batches(topo, 16, image_size=8, num_classes=10)
    a, b = next(it), next(it)
    assert a["image"].shape == (16, 8, 8, 3) and a["image"].dtype == jnp.bfloat16
    assert a["image"].sharding == topo.batch_sharding and a["label"].sharding == topo.batch_sharding
    labels = np.asarray(a["label"])
    assert labels.min() >= 0 and labels.max() < 10
    pixels = np.asarray(a["image"].astype(jnp.float32))
    assert 0 <= pixels.min() and pixels.max() <= 255 and pixels.std() > 30  # uniform 0..255: std ~74
    assert b["image"] is a["image"]  # the same batch again: zero input cost
    with pytest.raises(ValueError, match="multiple of the 8 replicas"):
        next(synthetic_batches(topo, 12))
