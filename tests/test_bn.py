"""labkit.bn: DistributedBatchNorm equals a single-device batch norm over each group's concatenated batch.

References are independent of the code under test: numpy float64 for outputs, running statistics and captured
statistics; flax.linen.BatchNorm (single device, plain jax.grad) for gradients.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests.conftest import GROUPS, SHAPES
from jax.sharding import PartitionSpec as P

from labkit.bn import BN_STAT_FIELDS, DistributedBatchNorm, stats_records
from labkit.mesh import Topology

PER_REPLICA, HW, C = 4, 3, 5
EPS, MOM = 1e-5, 0.9


def _data(dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(1.5, 2.0, size=(8 * PER_REPLICA, HW, HW, C)) + np.arange(8).repeat(PER_REPLICA)[:, None, None, None]
    w = rng.normal(size=x.shape)  # cotangent: loss = sum(w * y)
    params = {"scale": rng.normal(1.0, 0.3, C).astype(np.float32), "bias": rng.normal(0, 0.3, C).astype(np.float32)}
    stats = {"mean": rng.normal(0, 0.1, C).astype(np.float32), "var": rng.uniform(0.5, 1.5, C).astype(np.float32)}
    return np.asarray(jnp.asarray(x, dtype).astype(jnp.float32)), w.astype(np.float32), params, stats


def _distributed(topo, x, w, params, stats, dtype, capture=False):
    """Forward, d(sum(w*y))/d(x, params) and new running stats, computed per replica inside shard_map."""
    bn = DistributedBatchNorm(use_running_average=False, momentum=MOM, epsilon=EPS, axis_name=topo.bn_axes,
                              capture_stats=capture)
    axes = topo.replica_axes
    mutable = ["batch_stats", "bn_stats"] if capture else ["batch_stats"]

    def body(params, stats, x, w):
        params = jax.tree_util.tree_map(lambda p: jax.lax.pcast(p, axes, to="varying"), params)

        def f(params, x):
            y, upd = bn.apply({"params": params, "batch_stats": stats}, x, mutable=mutable)
            return jnp.sum(y.astype(jnp.float32) * w), (y, upd)

        (dparams, dx), (y, upd) = jax.grad(f, argnums=(0, 1), has_aux=True)(params, x)
        per_replica = lambda t: jax.tree_util.tree_map(lambda v: v[None], t)  # noqa: E731
        return y, dx, jax.lax.psum(dparams, axes), per_replica(upd["batch_stats"]), per_replica(upd.get("bn_stats", {}))

    f = jax.jit(jax.shard_map(body, mesh=topo.mesh, in_specs=(P(), P(), P(axes), P(axes)),
                              out_specs=(P(axes), P(axes), P(), P(axes), P(axes))))
    return f(params, stats, topo.shard_batch(np.asarray(x, dtype=jnp.dtype(dtype))), topo.shard_batch(w))


def _numpy_reference(x, groups, params, stats):
    """float64 batch norm of each group's concatenated batch; returns y and per-replica running stats."""
    y = np.empty(x.shape, np.float64)
    run_mean, run_var = np.empty((8, C)), np.empty((8, C))
    for group in groups:
        rows = np.concatenate([np.arange(r * PER_REPLICA, (r + 1) * PER_REPLICA) for r in group])
        xg = x[rows].astype(np.float64)
        mean, var = xg.mean((0, 1, 2)), xg.var((0, 1, 2))
        y[rows] = (xg - mean) / np.sqrt(var + EPS) * params["scale"] + params["bias"]
        run_mean[group] = MOM * stats["mean"] + (1 - MOM) * mean
        run_var[group] = MOM * stats["var"] + (1 - MOM) * var
    return y, run_mean, run_var


def _flax_grad_reference(x, w, groups, params, stats):
    """Gradients from flax's own BatchNorm, one plain single-device call per group."""
    ref = nn.BatchNorm(use_running_average=False, momentum=MOM, epsilon=EPS)
    dx = np.empty(x.shape, np.float32)
    dparams = jax.tree_util.tree_map(np.zeros_like, params)
    for group in groups:
        rows = np.concatenate([np.arange(r * PER_REPLICA, (r + 1) * PER_REPLICA) for r in group])

        def f(p, xg):
            y, _ = ref.apply({"params": p, "batch_stats": stats}, xg, mutable=["batch_stats"])
            return jnp.sum(y * w[rows])

        gp, gx = jax.jit(jax.grad(f, argnums=(0, 1)))(params, jnp.asarray(x[rows]))
        dx[rows] = gx
        dparams = jax.tree_util.tree_map(lambda a, b: a + np.asarray(b), dparams, gp)
    return dx, dparams


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("g", GROUPS)
def test_equals_single_device_bn_over_group(shape, g, dtype):
    topo = Topology.build(shape=shape, bn_group=g)
    x, w, params, stats = _data(dtype)
    y, dx, dparams, new_stats, _ = _distributed(topo, x, w, params, stats, dtype)
    y_ref, mean_ref, var_ref = _numpy_reference(x, topo.bn_groups(), params, stats)
    dx_ref, dparams_ref = _flax_grad_reference(x, w, topo.bn_groups(), params, stats)

    assert y.dtype == jnp.dtype(dtype)  # cast back to the input dtype
    # Statistics are float32 in both cases, so running stats are tight even for bf16 inputs.
    np.testing.assert_allclose(np.asarray(new_stats["mean"]), mean_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(new_stats["var"]), var_ref, rtol=1e-5, atol=1e-5)
    if dtype == "float32":
        np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(dx), dx_ref, rtol=1e-4, atol=1e-4)
        for k in params:
            np.testing.assert_allclose(np.asarray(dparams[k]), dparams_ref[k], rtol=1e-4, atol=1e-4)
    else:  # bf16 output and cotangent: 8 mantissa bits, so compare at bf16 resolution of each array's scale
        _assert_close_bf16(y, y_ref)
        _assert_close_bf16(dx, dx_ref)
        for k in params:
            _assert_close_bf16(dparams[k], dparams_ref[k])


def _assert_close_bf16(actual, ref):
    """Within bf16 tolerance: 1% of each value plus 1% of the array's largest magnitude (2-3 bf16 ulps)."""
    actual, ref = np.asarray(actual, np.float64), np.asarray(ref, np.float64)
    np.testing.assert_allclose(actual, ref, rtol=1e-2, atol=1e-2 * np.abs(ref).max())


def test_group_size_changes_the_result():
    """Guard against a test that passes trivially: g=1 and g=8 must normalize differently."""
    x, w, params, stats = _data("float32")
    y1 = _distributed(Topology.build(bn_group=1), x, w, params, stats, "float32")[0]
    y8 = _distributed(Topology.build(bn_group=8), x, w, params, stats, "float32")[0]
    assert np.abs(np.asarray(y1) - np.asarray(y8)).max() > 0.1


def test_captured_statistics_match_numpy():
    topo = Topology.build(shape=(2, 4), bn_group=4)
    x, w, params, stats = _data("float32", seed=1)
    *_, captured = _distributed(topo, x, w, params, stats, "float32", capture=True)
    (record,) = stats_records(captured, topo.bn_groups())
    assert record["groups"] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert set(BN_STAT_FIELDS) <= set(record) and all(len(record[f]) == 8 for f in BN_STAT_FIELDS)
    for r in range(8):
        xr = x[r * PER_REPLICA:(r + 1) * PER_REPLICA].astype(np.float64)
        grp = next(g for g in topo.bn_groups() if r in g)
        xg = np.concatenate([x[q * PER_REPLICA:(q + 1) * PER_REPLICA] for q in grp]).astype(np.float64)
        rm, rv, gm, gv = xr.mean((0, 1, 2)), xr.var((0, 1, 2)), xg.mean((0, 1, 2)), xg.var((0, 1, 2))
        expect = {
            "replica_mean": rm.mean(), "replica_var": rv.mean(), "group_mean": gm.mean(), "group_var": gv.mean(),
            "running_mean": stats["mean"].mean(), "running_var": stats["var"].mean(),
            "replica_vs_group": np.sqrt(np.mean(((rm - gm) / np.sqrt(gv + EPS)) ** 2)),
            "group_vs_running": np.sqrt(np.mean(((gm - stats["mean"]) / np.sqrt(stats["var"] + EPS)) ** 2)),
            "replica_vs_running": np.sqrt(np.mean(((rm - stats["mean"]) / np.sqrt(stats["var"] + EPS)) ** 2)),
        }
        for field, value in expect.items():
            assert record[field][r] == pytest.approx(value, rel=1e-4, abs=1e-5), (field, r)


def test_running_average_mode_uses_stored_statistics():
    x, _, params, stats = _data("float32")
    bn = DistributedBatchNorm(use_running_average=True, axis_name=("x", "y"))  # no collective in this mode
    y = bn.apply({"params": params, "batch_stats": stats}, jnp.asarray(x))
    ref = (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * params["scale"] + params["bias"]
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)


def test_init_outside_shard_map_with_axis_name():
    variables = DistributedBatchNorm(use_running_average=False, axis_name=("x", "y")).init(
        jax.random.key(0), jnp.ones((2, 3, 3, C)))
    assert variables["batch_stats"]["mean"].shape == (C,) and variables["params"]["scale"].shape == (C,)


def test_pmap_axis_index_groups_teaching_comparison():
    """The paper's literal form (pmap + cross-replica sum with group assignment) gives the same numbers
    as the mesh-axes form. pmap is used here only as this labelled teaching comparison."""
    topo = Topology.build(shape=(2, 4), bn_group=2)
    x, w, params, stats = _data("float32", seed=3)
    y_mesh = np.asarray(_distributed(topo, x, w, params, stats, "float32")[0])
    bn = DistributedBatchNorm(use_running_average=False, axis_name="r", axis_index_groups=topo.bn_groups())
    f = jax.pmap(lambda xr: bn.apply({"params": params, "batch_stats": stats}, xr, mutable=["batch_stats"])[0],
                 axis_name="r", devices=list(topo.mesh.devices.flat))
    y_pmap = np.asarray(f(x.reshape(8, PER_REPLICA, HW, HW, C))).reshape(x.shape)
    np.testing.assert_allclose(y_pmap, y_mesh, rtol=1e-6, atol=1e-6)


def _bn_backward_float64(x, dy, scale, groups):
    """d(sum(dy * y))/dx of batch norm over each group's concatenated batch, in float64 (the textbook formula)."""
    dx = np.empty(x.shape, np.float64)
    for group in groups:
        rows = np.concatenate([np.arange(r * PER_REPLICA, (r + 1) * PER_REPLICA) for r in group])
        xg, dyg = x[rows].astype(np.float64), dy[rows].astype(np.float64)
        n = xg.size // xg.shape[-1]
        mean, var = xg.mean((0, 1, 2)), xg.var((0, 1, 2))
        xhat = (xg - mean) / np.sqrt(var + EPS)
        dx[rows] = scale / np.sqrt(var + EPS) / n * (n * dyg - dyg.sum((0, 1, 2)) - xhat * (dyg * xhat).sum((0, 1, 2)))
    return dx


@pytest.mark.parametrize("form", ["chan", "two_pass", "fast"])
def test_variance_at_mean_over_std_1000_against_float64(form):
    """chan (the default) and two_pass are accurate where E[x^2]-E[x]^2 in float32 is not (mean/std = 1000):
    variance, output and input gradient against float64 numpy."""
    topo = Topology.build(shape=(2, 4), bn_group=4)
    rng = np.random.default_rng(5)
    x = (1000.0 + rng.normal(size=(8 * PER_REPLICA, HW, HW, C))).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    params = {"scale": np.ones(C, np.float32), "bias": np.zeros(C, np.float32)}
    stats = {"mean": np.zeros(C, np.float32), "var": np.ones(C, np.float32)}
    bn = DistributedBatchNorm(use_running_average=False, momentum=0.0, epsilon=EPS, axis_name=topo.bn_axes,
                              variance=form)
    axes = topo.replica_axes

    def body(xs, dys):
        def f(v):
            y, upd = bn.apply({"params": params, "batch_stats": stats}, v, mutable=["batch_stats"])
            return jnp.sum(y * dys), (y, upd)
        dx, (y, upd) = jax.grad(f, has_aux=True)(xs)
        return y, dx, jax.tree_util.tree_map(lambda v: v[None], upd)

    f = jax.jit(jax.shard_map(body, mesh=topo.mesh, in_specs=P(axes), out_specs=P(axes)))
    y, dx, upd = f(topo.shard_batch(x), topo.shard_batch(dy))
    y_ref, _, var_ref = _numpy_reference(x.astype(np.float64), topo.bn_groups(), params,
                                         {"mean": np.zeros(C), "var": np.zeros(C)})
    var_ref = var_ref / (1 - MOM)  # the helper mixes in momentum 0.9 of a zero running var
    var_err = np.abs(np.asarray(upd["batch_stats"]["var"]) - var_ref).max() / var_ref.max()
    y_err = np.abs(np.asarray(y, np.float64) - y_ref).max()
    dx_ref = _bn_backward_float64(x, dy, params["scale"].astype(np.float64), topo.bn_groups())
    dx_err = np.abs(np.asarray(dx, np.float64) - dx_ref).max() / np.abs(dx_ref).max()
    if form == "fast":  # the cancellation this form suffers: documents why it is not the default
        assert var_err > 0.05
    else:
        assert var_err < 1e-3 and y_err < 1e-2 and dx_err < 1e-2, (var_err, y_err, dx_err)


def _layer_collectives(topo, form, *, check_vma=True):
    """(forward, backward) collectives of one BN layer over ``topo``'s BN axes, from the traced jaxprs (the
    backward ones = those the gradient adds to the forward ones), read by the independent jaxpr walker."""
    from tests.collectives.jaxpr_walk import base_name, collectives
    x = topo.shard_batch(np.ones((8 * PER_REPLICA, HW, HW, C), np.float32))
    bn = DistributedBatchNorm(use_running_average=False, axis_name=topo.bn_axes, variance=form)
    variables = bn.init(jax.random.key(0), np.ones((1, HW, HW, C), np.float32))
    fwd = lambda xs: bn.apply(variables, xs, mutable=["batch_stats"])[0]  # noqa: E731
    grad = lambda xs: jax.grad(lambda v: jnp.sum(jnp.sin(fwd(v))))(xs)  # noqa: E731
    spec = P(topo.replica_axes)
    traced = [collectives(jax.make_jaxpr(jax.shard_map(f, mesh=topo.mesh, in_specs=spec, out_specs=spec,
                                                       check_vma=check_vma))(x)) for f in (fwd, grad)]
    assert traced[1][:len(traced[0])] == traced[0]  # the gradient's program starts with the forward pass
    traced = [[(base_name(name), axes, perm, shape) for name, axes, perm, shape in t] for t in traced]
    return traced[0], traced[1][len(traced[0]):]


def test_chan_is_the_default_one_all_gather_forward_one_sum_backward():
    """Default: one collective per layer forward (an all-gather of every replica's (mean, M2)), one backward
    (the sum of the two cotangent vectors: the least BN's gradient needs), both over the BN axes only."""
    assert DistributedBatchNorm().variance == "chan" and DistributedBatchNorm().use_fast_variance is False
    for g in (2, 4, 8):
        topo = Topology.build(shape=(2, 4), bn_group=g)
        fwd, bwd = _layer_collectives(topo, "chan")
        assert [(name, axes, shape) for name, axes, _, shape in fwd] == [("all_gather", topo.bn_axes, (1, 2, C))]
        assert [(name, axes, shape) for name, axes, _, shape in bwd] == [("psum", topo.bn_axes, (2, C))]
    # Under check_vma=False (the train step with a link-level reducer) the cast is nothing and the all-gather's
    # transpose, one reduce-scatter, sums the cotangents instead: still one each way.
    fwd, bwd = _layer_collectives(topo, "chan", check_vma=False)
    assert [c[0] for c in fwd] == ["all_gather"] and [c[0] for c in bwd] == ["psum_scatter"]
    assert _layer_collectives(Topology.build(shape=(2, 4), bn_group=1), "chan") == ([], [])


@pytest.mark.parametrize("form, forward, backward", [("chan", 1, 1), ("two_pass", 2, 3), ("fast", 1, 2)])
def test_the_cost_model_counts_what_each_form_traces(form, forward, backward):
    """collectives.costmodel.BN_FORMS (what the pod projection and BENCHMARKS count) = the traced layer: the
    same primitives in order, and the same float32 values per channel each replica puts in."""
    from labkit.collectives.costmodel import BN_FORMS
    fwd, bwd = _layer_collectives(Topology.build(shape=(2, 4), bn_group=2), form)
    assert (len(fwd), len(bwd)) == (forward, backward)
    per_channel = lambda found: tuple((name, int(np.prod(shape)) // C) for name, _, _, shape in found)  # noqa: E731
    assert per_channel(fwd) == BN_FORMS[form]["forward"] and per_channel(bwd) == BN_FORMS[form]["backward"]


def test_unknown_variance_form_is_a_clear_error():
    allowed = r"allowed values: \['chan', 'two_pass', 'fast'\]"
    with pytest.raises(ValueError, match=r"variance: unknown form 'exact'; " + allowed):
        DistributedBatchNorm(use_running_average=False, variance="exact").init(jax.random.key(0), jnp.ones((2, C)))
