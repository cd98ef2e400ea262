"""labkit.train.overlap: gradients reach the reducer in backprop order; latency-hiding flags never on CPU."""
import os

import jax
import optax

from labkit.data import digits_batch
from labkit.mesh import Topology
from labkit.models import create_model
from labkit.train import overlap
from labkit.train.step import create_train_state, make_train_step


def test_the_reducer_gets_the_last_layer_first_and_the_stem_last():
    topo = Topology.build(shape=(2, 4), bn_group=2)
    model = create_model("resnet_tiny", num_classes=10, bn_axis_name=topo.bn_axes)
    state = jax.device_put(create_train_state(model, optax.sgd(0.1), (16, 16, 3)), topo.replicated)
    seen = []

    def spy(tree):  # a plain sum, recording the order it was handed
        seen.append([leaf.shape for leaf in jax.tree_util.tree_leaves(tree)])
        return jax.lax.psum(tree, topo.replica_axes)

    images, labels = digits_batch(64, 16)
    jax.eval_shape(make_train_step(model, topo, reduce_gradients=spy, donate=False), state,
                   topo.shard_batch(images), topo.shard_batch(labels))
    shapes = seen[0]
    assert set(shapes[:2]) == {(10,), (32, 10)}  # the classifier's bias and kernel: made first by backprop
    assert shapes[-1] == (3, 3, 3, 8)  # the stem convolution: its gradient is the last one made
    assert sorted(shapes) == sorted(x.shape for x in jax.tree_util.tree_leaves(state.params))


def test_backprop_order_reads_first_use_from_the_jaxpr():
    params = {"a": 1.0, "b": 2.0, "c": 3.0}
    order = overlap.backprop_order(lambda p: p["c"] * (p["b"] + p["a"] * 2.0), params)
    assert order == [2, 1, 0]  # c is used last in the forward pass: its gradient first


def test_latency_hiding_flags_only_off_cpu(monkeypatch):
    assert overlap.latency_hiding_flags("cpu") == {} and overlap.latency_hiding_flags("tpu") == {}
    assert overlap.latency_hiding_flags("gpu") == {"XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=true"}
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert overlap.enable_latency_hiding() == {}  # this machine is CPU: nothing is added
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"


def test_latency_hiding_flags_come_before_the_backend_or_not_at_all(monkeypatch):
    """On a GPU (stood in by the platform check), the flag is added while no backend exists; once one exists
    (this test process runs on CPU devices) XLA would ignore it, so nothing is added and a warning says so."""
    monkeypatch.setattr(overlap, "_platform_before_start", lambda: "gpu")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    jax.devices()  # the backend exists
    with __import__("pytest").warns(RuntimeWarning, match="already started, so XLA would ignore"):
        assert overlap.enable_latency_hiding() == {}
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"
    monkeypatch.setattr(overlap, "_backend_started", lambda: False)
    assert overlap.enable_latency_hiding() == {"XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=true"}
    assert os.environ["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=8 "
                                       "--xla_gpu_enable_latency_hiding_scheduler=true")
    assert overlap.enable_latency_hiding() == {}  # already there: a second call adds nothing, no warning
