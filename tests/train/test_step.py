"""labkit.train.step: one SPMD step equals a single-device computation with the same BN groups."""
import jax
import numpy as np
import optax
import pytest

from labkit.data import digits_batch
from labkit.mesh import Topology
from labkit.models import create_model
from labkit.train.step import create_train_state, cross_entropy_loss, make_train_step

LR = 0.5


def _reference_step(model_ref, state, images, labels, groups, per_replica):
    """Single device: run BN over each group's concatenated batch; loss = mean over groups (equal sizes)."""
    rows = [np.concatenate([np.arange(r * per_replica, (r + 1) * per_replica) for r in g]) for g in groups]

    def loss_fn(params):
        losses, stats = [], []
        for idx in rows:
            logits, new = model_ref.apply({"params": params, "batch_stats": state.batch_stats}, images[idx],
                                          train=True, mutable=["batch_stats"])
            losses.append(cross_entropy_loss(logits, labels[idx]))
            stats.append(new["batch_stats"])
        return sum(losses) / len(losses), jax.tree_util.tree_map(lambda *s: sum(s) / len(s), *stats)

    (loss, stats), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(state.params)
    return state.apply_gradients(grads=grads, batch_stats=stats), loss


@pytest.mark.parametrize("g", [1, 2, 8])
def test_one_step_equals_single_device_reference(g):
    topo = Topology.build(shape=(2, 4), bn_group=g)
    model = create_model("resnet_tiny", num_classes=10, bn_axis_name=topo.bn_axes)
    model_ref = create_model("resnet_tiny", num_classes=10)  # plain per-call BN, single device
    images, labels = digits_batch(64, 16)
    state0 = create_train_state(model, optax.sgd(LR), (16, 16, 3), rng=1)
    # Make the zero-initialized last BN scales non-zero so every layer's gradient is exercised.
    state0 = state0.replace(params=jax.tree_util.tree_map(lambda p: p + 0.05, state0.params))

    ref_state, ref_loss = _reference_step(model_ref, state0, images, labels, topo.bn_groups(), 64 // 8)
    step = make_train_step(model, topo, donate=False)
    state, metrics, _ = step(jax.device_put(state0, topo.replicated), topo.shard_batch(images),
                             topo.shard_batch(labels))

    assert float(metrics["loss"]) == pytest.approx(float(ref_loss), rel=1e-5)
    delta = jax.tree_util.tree_map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(), state0.params, ref_state.params)
    assert max(jax.tree_util.tree_leaves(delta)) > 1e-3  # the step really moved the parameters
    for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(ref_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)
    for a, b in zip(jax.tree_util.tree_leaves(state.batch_stats), jax.tree_util.tree_leaves(ref_state.batch_stats)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_custom_gradient_reducer_is_the_only_reduction():
    """A reducer that keeps only replica 0's gradient must give replica 0's gradient: if jax.grad summed the
    gradients itself (no pcast of the parameters to 'varying'), the result would be the full-batch mean."""
    import jax.numpy as jnp
    topo = Topology.build(shape=(2, 4), bn_group=1)  # per-replica BN: replica 0's gradient needs only its rows
    axes = topo.replica_axes
    model = create_model("resnet_tiny", num_classes=10, bn_axis_name=topo.bn_axes)
    model_ref = create_model("resnet_tiny", num_classes=10)
    images, labels = digits_batch(64, 16)
    state0 = create_train_state(model, optax.sgd(LR), (16, 16, 3), rng=1)
    state0 = state0.replace(params=jax.tree_util.tree_map(lambda p: p + 0.05, state0.params))

    def replica0_only(tree):
        first = jax.lax.axis_index(axes) == 0
        return jax.lax.psum(jax.tree_util.tree_map(lambda g: jnp.where(first, g, jnp.zeros_like(g)), tree), axes)

    step = make_train_step(model, topo, reduce_gradients=replica0_only, donate=False)
    state, _, _ = step(jax.device_put(state0, topo.replicated), topo.shard_batch(images), topo.shard_batch(labels))

    def loss0(params):  # replica 0's local loss on its 8 rows, single device
        logits, _ = model_ref.apply({"params": params, "batch_stats": state0.batch_stats}, images[:8], train=True,
                                    mutable=["batch_stats"])
        return cross_entropy_loss(logits, labels[:8])

    g0 = jax.jit(jax.grad(loss0))(state0.params)
    # The step divides the reduced sum by the replica count (8).
    want = jax.tree_util.tree_map(lambda p, g: np.asarray(p) - LR * np.asarray(g) / 8, state0.params, g0)
    for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-5)


def test_eval_step_counts_with_mask():
    from labkit.train.step import make_eval_step
    topo = Topology.build(shape=(2, 4), bn_group=2)
    model = create_model("resnet_tiny", num_classes=10, bn_axis_name=topo.bn_axes)
    state = create_train_state(model, optax.sgd(0.1), (16, 16, 3), rng=2)
    images, labels = digits_batch(64, 16)
    mask = (np.arange(64) < 50).astype(np.float32)  # the last 14 are padding
    got = make_eval_step(model, topo)(jax.device_put(state, topo.replicated), topo.shard_batch(images),
                                      topo.shard_batch(labels), topo.shard_batch(mask))
    logits = np.asarray(model.apply({"params": state.params, "batch_stats": state.batch_stats}, images, train=False))
    top5 = np.argsort(-logits, -1)[:, :5]
    assert float(got["count"]) == 50
    assert float(got["top1"]) == np.sum((logits.argmax(-1) == labels)[:50])
    assert float(got["top5"]) == np.sum((top5 == labels[:, None]).any(-1)[:50])


@pytest.mark.parametrize("algorithm", ["xla", "ring"])
def test_the_step_has_one_bn_collective_per_layer_each_way(algorithm):
    """The whole training step's traced program: over the BN axes, exactly one all-gather per BN layer (forward)
    and one sum per BN layer (backward), with the vma check on (xla) and off (a link-level reducer)."""
    from collections import Counter
    from labkit.collectives import make_reducer
    from tests.collectives.jaxpr_walk import base_name, collectives
    topo = Topology.build(shape=(2, 4), bn_group=2)
    model = create_model("resnet_tiny", num_classes=10, bn_axis_name=topo.bn_axes)
    state = jax.device_put(create_train_state(model, optax.sgd(0.1), (16, 16, 3)), topo.replicated)
    layers = sum(1 for path in jax.tree_util.tree_leaves_with_path(state.batch_stats) if "mean" in str(path[0][-1]))
    assert layers >= 5
    step = make_train_step(model, topo, reduce_gradients=make_reducer(topo, algorithm), donate=False)
    x, y = topo.shard_batch(np.zeros((16, 16, 16, 3), np.float32)), topo.shard_batch(np.zeros((16,), np.int32))
    found = Counter(base_name(name) for name, axes, _, _ in collectives(jax.make_jaxpr(step)(state, x, y))
                    if axes == topo.bn_axes)
    # with the vma check off, the all-gather's transpose (a reduce-scatter) sums the cotangents instead
    backward = "psum" if algorithm == "xla" else "psum_scatter"
    assert found == Counter({"all_gather": layers, backward: layers})
