"""collectives.links: all-reduce written out hop by hop: every byte moves by ``ppermute`` between torus neighbours.

Owns the link-level algorithms (``ring``, ``torus2d_links``, ``torus2d_bidir_links``), the ring order over the
torus (``ring_order``) and the ring phases they are built from (reduce-scatter and all-gather around all the
rings of one torus dimension at once, in the +1 or -1 direction, wrap-around included).
Must not: use XLA's own collectives (psum, psum_scatter, all_gather): that is what ``collectives.algorithms``'s
XLA-composed forms are for. Handle pytrees, dtypes or padding (``collectives.fuse``), time, or build meshes.

Typing: a ``ppermute`` result is per-replica ("varying") to JAX even when every replica holds the same sum, and
no collective-free cast back to "replicated" exists. So these results are typed varying; the train step runs
its ``shard_map`` with ``check_vma=False`` for them (``make_reducer(...).invariant`` says which).

Step count: the phases of ``torus2d_bidir_links`` are separated by ``optimization_barrier`` so the two halves
move through the phases together, as the cost model assumes (its step count = the longest chain of hops).
"""
from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
from jax import lax

from labkit.mesh import Topology

__all__ = ["ring_order", "ring", "torus2d_links", "torus2d_bidir_links"]


def ring_order(shape: tuple[int, int]) -> list[int]:
    """A ring through every replica of an (X, Y) torus in which each hop is a torus neighbour (wrap included).

    Lines (rows, or columns when that works better) are walked one after another, each in +1 or -1 direction,
    stepping to the next line from where the last one ended. Alternating directions is the boustrophedon
    ("snake"); with an odd number of odd-length lines the directions are chosen so the ring still closes
    through a wrap-around link. Returns replica ids in ring order, starting at 0.
    """
    x, y = shape
    # Walk rows if that can close, else walk columns (transpose back at the end).
    if x % 2 == 0 or (y % 2 == 1 and y <= x):
        return _line_walk(x, y)
    walk = (divmod(r, x) for r in _line_walk(y, x))  # ids on the transposed (Y, X) grid: (column, row)
    return [row * y + col for col, row in walk]


def _line_walk(lines: int, length: int) -> list[int]:
    """Walk ``lines`` rows of ``length`` cells; row-to-row hop along +line, column drift must total 0 mod length.

    A row walked in +col ends one column *before* its start (net shift -1); in -col, one *after* (+1).
    Even line count: alternate (sum 0). Odd with odd length <= lines: (lines+length)/2 rows at +1, rest at -1.
    """
    if lines % 2 == 0:
        signs = [-((-1) ** i) for i in range(lines)]                   # -1, +1, -1, ... the snake
    else:
        up = (lines + length) // 2
        signs = [+1] * up + [-1] * (lines - up)
    order, col = [], 0
    for i, s in enumerate(signs):
        step = -s  # a row with net shift -1 walks +col
        for k in range(length):
            order.append(i * length + (col + step * k) % length)
        col = (col + step * (length - 1)) % length
    return order


class _Rings:
    """Rings of ``k`` members covering every replica: my position on mine, and the hop to the next member."""

    def __init__(self, axes: tuple[str, ...], ids_in_ring_order: np.ndarray):
        # ids_in_ring_order: [rings, k] replica ids; member p of a ring sends to member p+1 (direction +1).
        self.axes, self.k = axes, ids_in_ring_order.shape[1]
        pos = np.empty(ids_in_ring_order.size, np.int32)
        pos[ids_in_ring_order.reshape(-1)] = np.tile(np.arange(self.k), ids_in_ring_order.shape[0])
        self._pos_table = pos
        nxt = np.roll(ids_in_ring_order, -1, axis=1)
        self.perm = {+1: [(int(a), int(b)) for a, b in zip(ids_in_ring_order.reshape(-1), nxt.reshape(-1))]}
        self.perm[-1] = [(b, a) for a, b in self.perm[+1]]

    def pos(self) -> jax.Array:
        return jnp.asarray(self._pos_table)[lax.axis_index(self.axes)]


def _dimension(topo: Topology, dim: str) -> _Rings:
    """All rings along torus dimension ``dim`` ('x': the columns, 'y': the rows), wrap-around included."""
    ids = np.arange(topo.num_replicas).reshape(topo.shape)
    return _Rings(topo.replica_axes, ids.T if dim == "x" else ids)


class _Phase:
    """One reduce-scatter (``'rs'``: buffer -> my summed chunk) or all-gather (``'ag'``: chunk -> buffer) around
    ``rings`` in direction ``d``, run one hop at a time so several phases can be interleaved."""

    def __init__(self, kind: str, value: jax.Array, rings: _Rings, d: int):
        self.kind, self.rings, self.d, self.rounds = kind, rings, d, rings.k - 1
        k = rings.k
        self.p = rings.pos()
        if kind == "rs":
            self.chunks = value.reshape(k, -1)
        else:  # my chunk sits at my position; the others arrive
            self.chunks = jnp.zeros((k, value.shape[0]), value.dtype)
            self.chunks = lax.dynamic_update_index_in_dim(self.chunks, value, self.p, 0) if k > 1 else value[None]

    def hop(self, s: int) -> None:
        k, d, p, ch = self.rings.k, self.d, self.p, self.chunks
        if self.kind == "rs":  # pass a partial sum on; add the one that arrives into my copy of that chunk
            sent = lax.dynamic_index_in_dim(ch, (p - d * (s + 1)) % k, keepdims=False)
            got = lax.ppermute(sent, self.rings.axes, self.rings.perm[d])
            c = (p - d * (s + 2)) % k
            self.chunks = lax.dynamic_update_index_in_dim(
                ch, lax.dynamic_index_in_dim(ch, c, keepdims=False) + got, c, 0)
        else:  # pass finished chunks on
            sent = lax.dynamic_index_in_dim(ch, (p - d * s) % k, keepdims=False)
            got = lax.ppermute(sent, self.rings.axes, self.rings.perm[d])
            self.chunks = lax.dynamic_update_index_in_dim(ch, got, (p - d * (s + 1)) % k, 0)

    def result(self) -> jax.Array:
        if self.kind == "rs":  # after k-1 hops my position's chunk holds the ring's sum
            return lax.dynamic_index_in_dim(self.chunks, self.p, keepdims=False)
        return self.chunks.reshape(-1)


def _run(phases: list[_Phase]) -> list[jax.Array]:
    """Run ``phases`` side by side, round by round (they use disjoint links or opposite directions)."""
    for s in range(max((ph.rounds for ph in phases), default=0)):
        for ph in phases:
            if s < ph.rounds:
                ph.hop(s)
    return [ph.result() for ph in phases]


def _both_ways(kind: str, value: jax.Array, rings: _Rings) -> list[_Phase]:
    """A phase on both directions of every link: one half of the data goes +1, the other half -1."""
    plus, minus = jnp.split(value, 2)
    return [_Phase(kind, plus, rings, +1), _Phase(kind, minus, rings, -1)]


def ring(buf, topo: Topology) -> jax.Array:
    """1-D ring over all N replicas (the snake of ``ring_order``): N-1 reduce-scatter hops, N-1 all-gather hops."""
    if topo.num_replicas == 1:
        return buf
    rings = _Rings(topo.replica_axes, np.asarray([ring_order(topo.shape)]))
    shard, = _run([_Phase("rs", buf, rings, +1)])
    out, = _run([_Phase("ag", shard, rings, +1)])
    return out


def torus2d_links(buf, topo: Topology) -> jax.Array:
    """Reduce-scatter around the X rings, all-reduce (reduce-scatter + all-gather) the shard around the Y rings,
    all-gather back around the X rings: 2(X-1) + 2(Y-1) hops, each to a torus neighbour."""
    rx, ry = _dimension(topo, "x"), _dimension(topo, "y")
    shard, = _run([_Phase("rs", buf, rx, +1)])
    shard, = _run([_Phase("rs", shard, ry, +1)])
    shard, = _run([_Phase("ag", shard, ry, +1)])
    out, = _run([_Phase("ag", shard, rx, +1)])
    return out


def torus2d_bidir_links(buf, topo: Topology) -> jax.Array:
    """Ying et al.'s two halves at once: half A reduce-scatters along Y then X, half B along X then Y, and they
    gather back in reverse. Every phase splits its data in two, one part per link direction."""
    rx, ry = _dimension(topo, "x"), _dimension(topo, "y")
    a, b = jnp.split(buf, 2)
    for kind, (ra, rb) in (("rs", (ry, rx)), ("rs", (rx, ry)), ("ag", (rx, ry)), ("ag", (ry, rx))):
        parts = _run(_both_ways(kind, a, ra) + _both_ways(kind, b, rb))
        a, b = jnp.concatenate(parts[:2]), jnp.concatenate(parts[2:])
        a, b = lax.optimization_barrier((a, b))  # the next phase starts when both halves finished this one
    return jnp.concatenate([a, b])
