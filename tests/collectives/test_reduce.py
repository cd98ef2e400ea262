"""labkit.collectives.reduce / fuse: pytree reducer inside shard_map (check_vma), buckets, dtypes, train step."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from labkit.collectives import ALGORITHMS, make_reducer
from labkit.collectives.fuse import plan_buckets
from labkit.mesh import Topology


def _tree(n, rng):
    """A gradient-like tree per replica: odd sizes, a scalar, bf16, int32, an empty leaf, nesting."""
    return {"conv": rng.normal(size=(n, 3, 3, 5)).astype(np.float32),
            "bias": rng.normal(size=(n, 7)).astype(np.float32),
            "scale": rng.normal(size=(n,)).astype(np.float32),                  # a scalar per replica
            "half": rng.normal(size=(n, 11)).astype(ml_dtypes.bfloat16),
            "count": rng.integers(-50, 50, size=(n, 3)).astype(np.int32),
            "empty": np.zeros((n, 0, 4), np.float32),
            "nested": [rng.normal(size=(n, 13)).astype(np.float32), ()]}


def _reduce_replicated(topo, algorithm, tree, **kw):
    """Run the reducer inside shard_map with out_specs=P(): check_vma unless the reducer says its results are
    typed per-replica (the link-level forms), as the train step does."""
    axes = topo.replica_axes
    reducer = make_reducer(topo, algorithm, **kw)
    assert reducer.invariant == (algorithm not in ("ring", "torus2d_links", "torus2d_bidir_links"))
    f = jax.shard_map(lambda t: reducer(jax.tree_util.tree_map(lambda b: b[0], t)), mesh=topo.mesh,
                      in_specs=P(axes), out_specs=P(), check_vma=reducer.invariant)
    return jax.jit(f)(jax.tree_util.tree_map(lambda a: jax.device_put(a, topo.batch_sharding), tree))


@pytest.mark.parametrize("shape", [(2, 4), (8, 1), (2, 2)], ids=str)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_pytree_sum_is_exact_and_replicated(algorithm, shape):
    n = shape[0] * shape[1]
    topo = Topology.build(shape=shape, devices=jax.devices()[:n])
    tree = _tree(n, np.random.default_rng(0))
    out = _reduce_replicated(topo, algorithm, tree, bucket_bytes=64)  # tiny buckets: many of them
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(
        jax.tree_util.tree_map(lambda a: a[0], tree))
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        got = np.asarray(_get(out, path))
        assert got.shape == leaf.shape[1:] and got.dtype == leaf.dtype, path
        want = leaf.astype(np.float64).sum(0)
        if leaf.dtype == np.int32:
            np.testing.assert_array_equal(got, leaf.sum(0))
        elif leaf.dtype == ml_dtypes.bfloat16:
            bound = 2 ** -7 * np.log2(2 * n) * np.abs(leaf.astype(np.float64)).sum(0) + 1e-6
            assert (np.abs(got.astype(np.float64) - want) <= bound).all(), path
        else:
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5, err_msg=str(path))


def _get(tree, path):
    for key in path:
        tree = tree[key.key if hasattr(key, "key") else key.idx]
    return tree


def test_empty_tree_and_only_empty_leaves():
    topo = Topology.build(shape=(2, 4))
    reducer = make_reducer(topo, "torus2d")
    assert reducer({}) == {} and reducer([]) == [] and reducer(None) is None
    out = _reduce_replicated(topo, "ring", {"e": np.zeros((8, 0), np.float32)})
    assert out["e"].shape == (0,) and out["e"].dtype == np.float32


@pytest.mark.parametrize("algorithm", ["torus2d_bidir", "torus2d_bidir_links"])
def test_a_replicated_input_is_summed_n_times_like_psum(algorithm):
    topo = Topology.build(shape=(2, 4))
    reducer = make_reducer(topo, algorithm)
    f = jax.jit(jax.shard_map(lambda v: reducer(v), mesh=topo.mesh, in_specs=P(), out_specs=P(),
                              check_vma=reducer.invariant))
    np.testing.assert_allclose(np.asarray(f(jnp.arange(5.0))), 8 * np.arange(5.0))


def test_bucket_plan_groups_by_work_dtype_and_pads():
    leaves = [((3,), np.float32), ((5,), ml_dtypes.bfloat16), ((0,), np.float32), ((), np.float32),
              ((2, 2), np.int32)]
    plan = plan_buckets(leaves, multiple=8, bucket_bytes=None)
    assert [(b.work_dtype, b.leaves, b.length) for b in plan] == [
        (np.dtype(np.float32), (0, 3), 8), (np.dtype(ml_dtypes.bfloat16), (1,), 8), (np.dtype(np.int32), (4,), 8)]
    # bf16 reduced in fp32 shares the fp32 bucket; 16-byte buckets split the fp32 leaves apart.
    plan = plan_buckets(leaves, multiple=8, bucket_bytes=16, reduce_dtype=np.float32)
    assert [b.leaves for b in plan] == [(0,), (1,), (3,), (4,)]
    assert plan[1].work_dtype == np.float32
    assert all(b.length % 8 == 0 and b.padding == b.length - sum(b.sizes) for b in plan)


def test_bad_inputs_are_clear_errors():
    topo = Topology.build(shape=(2, 4))
    with pytest.raises(ValueError, match="allowed values"):
        make_reducer(topo, "butterfly")
    with pytest.raises(ValueError, match="bucket_bytes"):
        make_reducer(topo, "ring", bucket_bytes=0)
    with pytest.raises(ValueError, match="cannot be summed"):
        plan_buckets([((2,), np.bool_)], multiple=1)
    with pytest.raises(ValueError, match="reduce_dtype"):
        plan_buckets([((2,), np.float32)], multiple=1, reduce_dtype=np.int32)


@pytest.mark.parametrize("algorithm", ["ring", "torus2d_bidir", "torus2d_links", "torus2d_bidir_links"])
def test_as_the_train_step_reducer_it_matches_psum(algorithm):
    from labkit.data.fixed import digits_batch
    from labkit.models import create_model
    from labkit.train.step import create_train_state, make_train_step
    topo = Topology.build(shape=(2, 4), bn_group=2)
    model = create_model("resnet_tiny", num_classes=10, bn_axis_name=topo.bn_axes)
    images, labels = digits_batch(32, 16)
    state0 = jax.device_put(create_train_state(model, optax.sgd(0.5), (16, 16, 3), rng=1), topo.replicated)
    x, y = topo.shard_batch(images), topo.shard_batch(labels)
    ref, ref_metrics, _ = make_train_step(model, topo, donate=False)(state0, x, y)
    buckets = 4096 if algorithm == "torus2d_bidir" else None  # many buckets; unrolled link-level hops compile slowly
    step = make_train_step(model, topo, reduce_gradients=make_reducer(topo, algorithm, bucket_bytes=buckets),
                           donate=False)
    state, metrics, _ = step(state0, x, y)
    assert float(metrics["loss"]) == pytest.approx(float(ref_metrics["loss"]), rel=1e-6)
    moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                for a, b in zip(jax.tree_util.tree_leaves(state0.params), jax.tree_util.tree_leaves(ref.params)))
    assert moved > 1e-3  # the step really moved the parameters
    for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(ref.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_large_divisible_leaves_travel_alone_without_padding():
    from labkit.collectives.fuse import DIRECT_BYTES
    big = DIRECT_BYTES // 4  # fp32 elements: exactly the threshold, divisible by 8
    leaves = [((3,), np.float32), ((big,), np.float32), ((5,), np.float32), ((big + 1,), np.float32),
              ((big,), ml_dtypes.bfloat16)]
    plan = plan_buckets(leaves, multiple=8, bucket_bytes=None)
    alone = [b for b in plan if b.leaves == (1,)]
    assert len(alone) == 1 and alone[0].padding == 0  # reduced in place
    packed = next(b for b in plan if 0 in b.leaves)
    assert 2 in packed.leaves and 3 in packed.leaves  # the odd-sized big leaf still needs packing/padding
    assert any(b.leaves == (4,) for b in plan)  # bf16 of half the bytes: below the threshold, own dtype bucket


@pytest.mark.parametrize("algorithm", ["ring", "torus2d_links", "torus2d_bidir_links"])
def test_in_the_train_step_every_gradient_byte_moves_by_ppermute(algorithm):
    """make_reducer at its defaults in make_train_step: compared with a step whose reducer does nothing, the
    only added collectives are ppermutes between torus neighbours (BN and metrics collectives are the same)."""
    from collections import Counter
    from labkit.models import create_model
    from labkit.train.step import create_train_state, make_train_step
    from tests.collectives.jaxpr_walk import collectives
    from tests.collectives.test_algorithms import _hop_dimension
    topo = Topology.build(shape=(2, 4), bn_group=2)
    model = create_model("resnet_tiny", num_classes=10, bn_axis_name=topo.bn_axes)
    state = jax.device_put(create_train_state(model, optax.sgd(0.1), (16, 16, 3)), topo.replicated)
    x = topo.shard_batch(np.zeros((16, 16, 16, 3), np.float32))
    y = topo.shard_batch(np.zeros((16,), np.int32))

    def traced(reducer):
        step = make_train_step(model, topo, reduce_gradients=reducer, donate=False)
        return collectives(jax.make_jaxpr(step)(state, x, y))

    def no_reduction(tree):
        return tree
    no_reduction.invariant = False
    found, base = traced(make_reducer(topo, algorithm)), traced(no_reduction)
    hops = [c for c in found if c[0] == "ppermute"]
    assert hops and all(_hop_dimension(perm, topo.shape) for _, _, perm, _ in hops)
    others = Counter((name, axes, shape) for name, axes, _, shape in found if name != "ppermute")
    assert others == Counter((name, axes, shape) for name, axes, _, shape in base)
