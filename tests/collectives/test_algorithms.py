"""labkit.collectives.algorithms (via all_reduce): every algorithm equals a numpy sum over replicas and has the
structure it claims in its traced program (which collectives, over which axes, how many hops, between which
neighbours); ring order."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from labkit.collectives import ALGORITHMS, all_reduce, ring_order
from labkit.collectives.algorithms import pad_multiple
from labkit.mesh import Topology

MESHES = [((1, 8), 1), ((2, 4), 1), ((4, 2), 1), ((8, 1), 1), ((2, 2), 1),
          ((2, 4), 2), ((4, 2), 4)]  # the last two split a torus dimension over two mesh axes


def _topo(shape, g=1):
    n = shape[0] * shape[1]
    return Topology.build(shape=shape, bn_group=g, devices=jax.devices()[:n])


@pytest.mark.parametrize("shape,g", MESHES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else f"g{v}")
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_equals_numpy_sum_fp32_odd_size(algorithm, shape, g):
    topo = _topo(shape, g)
    n = topo.num_replicas
    x = np.random.default_rng(n + len(algorithm)).normal(size=(n, 37)).astype(np.float32)  # 37: prime, not n | 37
    got = np.asarray(all_reduce(x, topo, algorithm))
    want = np.broadcast_to(x.astype(np.float64).sum(0), x.shape)
    assert got.shape == x.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 4), (4, 2), (2, 2)], ids=str)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_equals_numpy_sum_bf16(algorithm, shape):
    topo = _topo(shape)
    n = topo.num_replicas
    x = np.random.default_rng(3).normal(size=(n, 5, 7)).astype(ml_dtypes.bfloat16)
    got = np.asarray(all_reduce(x, topo, algorithm))
    assert got.dtype == ml_dtypes.bfloat16
    want = x.astype(np.float64).sum(0)
    scale = np.abs(x.astype(np.float64)).sum(0)  # a sum of n bf16 values is off by ~log2(n) ulps of this
    assert (np.abs(got.astype(np.float64) - want) <= 2 ** -7 * np.log2(2 * n) * scale + 1e-6).all()
    # Summing in fp32 rounds once at the end: within one bf16 ulp of the exact sum.
    got32 = np.asarray(all_reduce(x, topo, algorithm, reduce_dtype=jnp.float32)).astype(np.float64)
    np.testing.assert_allclose(got32, np.broadcast_to(want, got32.shape), rtol=2 ** -8, atol=1e-6)


def test_all_reduce_takes_a_sharded_global_array_and_integers():
    topo = _topo((2, 4))
    x = np.arange(8 * 3, dtype=np.int32).reshape(8, 3)
    out = all_reduce(topo.shard_batch(x), topo, "ring")
    assert out.sharding.spec == topo.batch_sharding.spec
    np.testing.assert_array_equal(np.asarray(out), np.broadcast_to(x.sum(0), x.shape))


def test_bad_algorithm_name_lists_allowed_values():
    topo = _topo((2, 4))
    with pytest.raises(ValueError, match=r"allowed values: \['xla', 'ring', 'torus2d'"):
        all_reduce(np.zeros((8, 4), np.float32), topo, "tree")


def test_leading_dimension_must_be_the_replicas():
    with pytest.raises(ValueError, match="leading replica dimension of 8"):
        all_reduce(np.zeros((4, 4), np.float32), _topo((2, 4)), "xla")


def test_pad_multiple():
    topo = _topo((2, 4))
    assert [pad_multiple(a, topo) for a in ALGORITHMS] == [1, 8, 8, 16, 8, 8, 32]


def _torus_neighbours(a, b, shape):
    (i, j), (k, m) = divmod(a, shape[1]), divmod(b, shape[1])
    dx, dy = (k - i) % shape[0], (m - j) % shape[1]
    return (dx == 0 and dy in (1, shape[1] - 1)) or (dy == 0 and dx in (1, shape[0] - 1))


@pytest.mark.parametrize("shape", [(x, y) for x in range(1, 7) for y in range(1, 7) if x * y > 1], ids=str)
def test_ring_visits_each_replica_once_with_neighbour_hops(shape):
    order = ring_order(shape)
    n = shape[0] * shape[1]
    assert sorted(order) == list(range(n)) and order[0] == 0
    hops = list(zip(order, order[1:] + order[:1]))  # including the hop that closes the ring
    assert all(_torus_neighbours(a, b, shape) for a, b in hops), hops


def test_ring_on_2x4_is_the_snake_closing_over_the_wraparound():
    assert ring_order((2, 4)) == [0, 1, 2, 3, 7, 6, 5, 4]  # 4 -> 0: X neighbours (wrap on a 2-row torus)
    order = ring_order((3, 3))  # odd x odd: must use wrap-around links to close
    wraps = [(a, b) for a, b in zip(order, order[1:] + order[:1])
             if abs(a // 3 - b // 3) == 2 or abs(a % 3 - b % 3) == 2]
    assert wraps


# --- structure, read from the traced program -------------------------------------------------------------

STRUCTURE_MESHES = [((2, 4), 1), ((4, 2), 1), ((1, 8), 1), ((8, 1), 1), ((2, 4), 2), ((4, 2), 4)]
_KIND = {"psum": "psum", "psum_invariant": "psum", "psum2": "psum", "reduce_scatter": "psum_scatter",
         "psum_scatter": "psum_scatter", "all_gather": "all_gather", "all_gather_invariant": "all_gather",
         "ppermute": "ppermute"}


def _traced(topo, algorithm, elems=64):
    from labkit.collectives.reduce import _compiled
    fn = _compiled(topo, algorithm, None, None)
    return jax.make_jaxpr(fn)(np.zeros((topo.num_replicas, elems), np.float32))


def _structure(topo, algorithm):
    from tests.collectives.jaxpr_walk import collectives
    return [(_KIND.get(name, name), axes, perm) for name, axes, perm, _ in collectives(_traced(topo, algorithm))]


def _hop_dimension(perm, shape):
    """'x' or 'y' if every pair of ``perm`` is a torus neighbour along that dimension (wrap-around included)."""
    dims = set()
    for a, b in perm:
        (i, j), (k, m) = divmod(a, shape[1]), divmod(b, shape[1])
        dx, dy = (k - i) % shape[0], (m - j) % shape[1]
        if dx == 0 and dy in (1, shape[1] - 1):
            dims.add("y")
        elif dy == 0 and dx in (1, shape[0] - 1):
            dims.add("x")
        else:
            raise AssertionError(f"{a} -> {b} is not a torus neighbour on {shape}")
    return dims


@pytest.mark.parametrize("shape,g", STRUCTURE_MESHES, ids=lambda v: "x".join(map(str, v))
                         if isinstance(v, tuple) else f"g{v}")
def test_xla_composed_forms_use_the_collectives_they_claim(shape, g):
    topo = _topo(shape, g)
    ax, ay, all_ = topo.torus_axes.x, topo.torus_axes.y, topo.replica_axes
    assert _structure(topo, "xla") == [("psum", all_, None)]
    assert _structure(topo, "torus2d") == [("psum_scatter", ax, None), ("psum", ay, None), ("all_gather", ax, None)]
    assert _structure(topo, "hierarchical") == [("psum_scatter", ay, None), ("psum", ax, None),
                                                ("all_gather", ay, None)]
    assert sorted(_structure(topo, "torus2d_bidir")) == sorted(
        [("psum_scatter", ay, None), ("psum_scatter", ax, None), ("psum", ax, None), ("psum", ay, None),
         ("all_gather", ay, None), ("all_gather", ax, None)])


@pytest.mark.parametrize("shape,g", STRUCTURE_MESHES, ids=lambda v: "x".join(map(str, v))
                         if isinstance(v, tuple) else f"g{v}")
@pytest.mark.parametrize("algorithm", ["ring", "torus2d_links", "torus2d_bidir_links"])
def test_link_level_forms_move_every_byte_by_ppermute_between_torus_neighbours(algorithm, shape, g):
    from labkit.collectives import costmodel
    from tests.collectives.jaxpr_walk import hop_depth
    topo = _topo(shape, g)
    (x, y), n = shape, topo.num_replicas
    found = _structure(topo, algorithm)
    assert {kind for kind, _, _ in found} <= {"ppermute"}, found  # no psum, no all_gather, no psum_scatter
    hops = {"x": [], "y": []}
    for _, axes, perm in found:
        assert axes == topo.replica_axes
        assert sorted(a for a, _ in perm) == list(range(n)) == sorted(b for _, b in perm)  # everyone sends once
        dims = _hop_dimension(perm, shape)
        if algorithm != "ring":  # one torus dimension per hop: the rings of X, or of Y
            assert len(dims) == 1, perm
            hops[dims.pop()].append(frozenset(perm))
    per_phase = {"ring": None, "torus2d_links": 1, "torus2d_bidir_links": 4}[algorithm]  # ppermutes per round
    if algorithm == "ring":
        assert len(found) == 2 * (n - 1)
    else:
        # reduce-scatter + all-gather along each dimension; bidir: 2 halves x 2 directions
        assert len(hops["x"]) == 2 * (x - 1) * per_phase and len(hops["y"]) == 2 * (y - 1) * per_phase
    if algorithm == "torus2d_bidir_links":
        for dim, k in (("x", x), ("y", y)):  # both directions of every link carry data, equally often
            reverse = [frozenset((b, a) for a, b in p) for p in hops[dim]]
            assert sorted(map(sorted, hops[dim])) == sorted(map(sorted, reverse))
            if k > 2:
                assert len(set(hops[dim])) == 2
    # The cost model's sequential step count = the longest chain of hops in the program.
    net = costmodel.Network("unit", shape, costmodel.Link(1.0, 1.0), costmodel.Link(1.0, 1.0))
    assert hop_depth(_traced(topo, algorithm)) == costmodel.predict(net, algorithm, 1.0).steps


def test_hierarchical_needs_one_host_per_torus_row():
    from types import SimpleNamespace
    from labkit.collectives.algorithms import _check_rows_are_hosts
    dev = lambda p: SimpleNamespace(process_index=p)  # noqa: E731
    _check_rows_are_hosts(np.array([[dev(0)] * 4, [dev(1)] * 4], dtype=object))       # 2 hosts x 4: fine
    _check_rows_are_hosts(np.array([[dev(0)] * 4, [dev(0)] * 4], dtype=object))       # one process simulates
    with pytest.raises(ValueError, match=r"torus Y must be one host's devices.*allowed: shape 2x4"):
        _check_rows_are_hosts(np.array([[dev(0)] * 2 + [dev(1)] * 2] * 2, dtype=object))  # rows span hosts
    with pytest.raises(ValueError, match=r"allowed: shape 2x4"):  # 4x2: two rows per host
        _check_rows_are_hosts(np.array([[dev(0)] * 2] * 2 + [[dev(1)] * 2] * 2, dtype=object))
