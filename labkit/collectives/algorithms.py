"""collectives.algorithms: all-reduce algorithms on one flat per-replica buffer, run inside ``shard_map``.

Owns the algorithms themselves (``xla``, ``ring``, ``torus2d``, ``torus2d_bidir``, ``hierarchical``), the ring
order over the torus, and how long a buffer must be for each algorithm to split it evenly (``pad_multiple``).
Every function here takes a 1-D buffer that is already padded and returns its SUM over all replicas.
Must not: handle pytrees, dtypes or padding (``collectives.fuse`` does), time anything, or build meshes.

Replica id = row-major position on the (X, Y) torus (``r = i * Y + j``), which is also the linear index over
``topo.replica_axes``; the torus X dimension is ``topo.torus_axes.x`` (one or two mesh axes), Y likewise.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from labkit.mesh import Topology

__all__ = ["ALGORITHMS", "ring_order", "pad_multiple", "reduce_flat", "check_algorithm"]

ALGORITHMS: tuple[str, ...] = ("xla", "ring", "torus2d", "torus2d_bidir", "hierarchical")


def check_algorithm(algorithm: str) -> str:
    """Return ``algorithm`` if it is a known name, else raise a ValueError listing the allowed names."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: unknown all-reduce algorithm {algorithm!r}; allowed values: "
                         f"{list(ALGORITHMS)}")
    return algorithm


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


def pad_multiple(algorithm: str, topo: Topology) -> int:
    """The buffer length (in elements) must be a multiple of this for ``algorithm`` to split it evenly."""
    check_algorithm(algorithm)
    n = topo.num_replicas
    return {"xla": 1, "torus2d_bidir": 2 * n}.get(algorithm, n)


def reduce_flat(buf: jax.Array, topo: Topology, algorithm: str, *, invariant: bool = True) -> jax.Array:
    """SUM of the 1-D ``buf`` over all replicas with ``algorithm``; call inside ``shard_map`` over ``topo.mesh``.

    ``len(buf)`` must be a multiple of ``pad_multiple(algorithm, topo)``. With ``invariant`` (for training:
    ``out_specs=P()`` under ``check_vma``) the last phase is an ``all_gather(to='invarying')`` so the result is
    typed as replicated; with ``invariant=False`` the ring's all-gather is also explicit ``ppermute`` steps
    and the result is typed per-replica (for ``out_specs=P(axes)``). The other algorithms are unaffected.
    """
    fn = _ALGORITHM_FNS[check_algorithm(algorithm)]
    if buf.ndim != 1 or buf.shape[0] % pad_multiple(algorithm, topo):
        raise ValueError(f"reduce_flat: {algorithm} needs a 1-D buffer whose length is a multiple of "
                         f"{pad_multiple(algorithm, topo)}, got shape {buf.shape}")
    return fn(_as_varying(buf, topo.replica_axes), topo, invariant)


def _as_varying(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
    """Type ``x`` as varying over every axis in ``axes`` (a replicated input is summed N times, like psum)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "mat", None)  # jax 0.10-0.12: aval.mat.varying; older: aval.vma
    varying = set(mat.varying) if mat is not None else set(getattr(aval, "vma", ()))
    missing = tuple(a for a in axes if a not in varying)
    return lax.pcast(x, missing, to="varying") if missing else x


# --- the algorithms ---------------------------------------------------------------------------------------

def _xla(buf, topo: Topology, invariant: bool):
    """The baseline: one psum over every replica axis; XLA picks the algorithm."""
    return lax.psum(buf, topo.replica_axes)


def _ring(buf, topo: Topology, invariant: bool):
    """1-D ring over all N replicas: N-1 reduce-scatter steps then N-1 all-gather steps, one chunk per hop."""
    axes, n = topo.replica_axes, topo.num_replicas
    if n == 1:
        return buf
    order = ring_order(topo.shape)
    chunks = buf.reshape(n, -1)
    pos = jnp.asarray(np.argsort(order), jnp.int32)[lax.axis_index(axes)]  # my position on the ring
    label = jnp.asarray(order, jnp.int32)  # chunk c ends up fully summed on replica c
    perm = [(order[p], order[(p + 1) % n]) for p in range(n)]
    for s in range(n - 1):  # reduce-scatter: pass a partial sum on, add what arrives into my copy
        sent = lax.dynamic_index_in_dim(chunks, label[(pos - 1 - s) % n], keepdims=False)
        got = lax.ppermute(sent, axes, perm)
        k = label[(pos - 2 - s) % n]
        chunks = lax.dynamic_update_index_in_dim(
            chunks, lax.dynamic_index_in_dim(chunks, k, keepdims=False) + got, k, 0)
    if invariant:  # replica r holds chunk r: gather them in replica order, typed as replicated
        mine = lax.dynamic_index_in_dim(chunks, label[pos], keepdims=False)
        return lax.all_gather(mine, axes, tiled=True, to="invarying")
    for s in range(n - 1):  # all-gather: pass finished chunks on
        sent = lax.dynamic_index_in_dim(chunks, label[(pos - s) % n], keepdims=False)
        got = lax.ppermute(sent, axes, perm)
        chunks = lax.dynamic_update_index_in_dim(chunks, got, label[(pos - 1 - s) % n], 0)
    return chunks.reshape(-1)


def _two_dim(buf, first: tuple[str, ...], second: tuple[str, ...]):
    """Reduce-scatter along ``first``, all-reduce the shard along ``second``, all-gather along ``first``."""
    shard = lax.psum_scatter(buf, first, scatter_dimension=0, tiled=True)
    shard = lax.psum(shard, second)
    return lax.all_gather(shard, first, axis=0, tiled=True, to="invarying")


def _torus2d(buf, topo: Topology, invariant: bool):
    """Mikami et al.: reduce-scatter along X, all-reduce along Y, all-gather along X."""
    return _two_dim(buf, topo.torus_axes.x, topo.torus_axes.y)


def _torus2d_bidir(buf, topo: Topology, invariant: bool):
    """Ying et al.: half A goes Y-then-X while half B goes X-then-Y, so both dimensions' links work at once.

    The phases are written interleaved (A's and B's reduce-scatters side by side, ...) so the scheduler can
    run them concurrently on the two link sets.
    """
    ax, ay = topo.torus_axes.x, topo.torus_axes.y
    a, b = jnp.split(buf, 2)
    a = lax.psum_scatter(a, ay, scatter_dimension=0, tiled=True)     # phase 1: A along Y | B along X
    b = lax.psum_scatter(b, ax, scatter_dimension=0, tiled=True)
    a = lax.psum(a, ax)                                               # phase 2: A along X | B along Y
    b = lax.psum(b, ay)
    a = lax.all_gather(a, ay, axis=0, tiled=True, to="invarying")    # phase 3: gather back
    b = lax.all_gather(b, ax, axis=0, tiled=True, to="invarying")
    return jnp.concatenate([a, b])


def _hierarchical(buf, topo: Topology, invariant: bool):
    """Horovod-style: reduce-scatter inside a host (torus Y = one host's devices, rows are kept per process
    by ``Topology``), all-reduce the shard across hosts (X), all-gather inside the host."""
    return _two_dim(buf, topo.torus_axes.y, topo.torus_axes.x)


_ALGORITHM_FNS: dict[str, Callable] = {"xla": _xla, "ring": _ring, "torus2d": _torus2d,
                                       "torus2d_bidir": _torus2d_bidir, "hierarchical": _hierarchical}
assert tuple(_ALGORITHM_FNS) == ALGORITHMS
