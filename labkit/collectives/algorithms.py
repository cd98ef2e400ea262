"""collectives.algorithms: the all-reduce registry and the XLA-composed algorithms, on one flat buffer.

Owns the algorithm names (``ALGORITHMS``), which of them move every byte by ``ppermute`` (``LINK_LEVEL``: their
results are typed per-replica), how long a buffer must be for each to split it evenly (``pad_multiple``), the
host check of ``hierarchical``, and the XLA-composed forms (``xla``, ``torus2d``, ``torus2d_bidir``,
``hierarchical``: per-axis psum / psum_scatter / all_gather, the practical fast ones). The hop-by-hop forms
(``ring``, ``torus2d_links``, ``torus2d_bidir_links``) live in ``collectives.links``.
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

from labkit.collectives import links
from labkit.collectives.links import ring_order
from labkit.mesh import Topology

__all__ = ["ALGORITHMS", "LINK_LEVEL", "ring_order", "pad_multiple", "reduce_flat", "check_algorithm",
           "check_hosts"]

ALGORITHMS: tuple[str, ...] = ("xla", "ring", "torus2d", "torus2d_bidir", "hierarchical", "torus2d_links",
                               "torus2d_bidir_links")
LINK_LEVEL: tuple[str, ...] = ("ring", "torus2d_links", "torus2d_bidir_links")  # every byte by ppermute


def check_algorithm(algorithm: str) -> str:
    """Return ``algorithm`` if it is a known name, else raise a ValueError listing the allowed names."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: unknown all-reduce algorithm {algorithm!r}; allowed values: "
                         f"{list(ALGORITHMS)}")
    return algorithm


def pad_multiple(algorithm: str, topo: Topology) -> int:
    """The buffer length (in elements) must be a multiple of this for ``algorithm`` to split it evenly."""
    check_algorithm(algorithm)
    n = topo.num_replicas
    return {"xla": 1, "torus2d_bidir": 2 * n, "torus2d_bidir_links": 4 * n}.get(algorithm, n)


def check_hosts(algorithm: str, topo: Topology) -> None:
    """``hierarchical`` treats a torus row (Y) as one host: with several processes, every row must be exactly
    one process's devices, else a ValueError. (With one process the rows simulate hosts.)"""
    if algorithm != "hierarchical":
        return
    grid = np.asarray(topo.mesh.devices).reshape(topo.shape)
    _check_rows_are_hosts(grid)


def _check_rows_are_hosts(grid: np.ndarray) -> None:
    procs = np.vectorize(lambda d: d.process_index, otypes=[int])(grid)
    hosts = sorted(set(procs.reshape(-1).tolist()))
    if len(hosts) <= 1:
        return
    rows_ok = all(len(set(row.tolist())) == 1 for row in procs) and procs.shape[0] == len(hosts)  # a row per host
    if not rows_ok:
        per_host = procs.size // len(hosts)
        raise ValueError(f"hierarchical: torus Y must be one host's devices, but the {grid.shape[0]}x"
                         f"{grid.shape[1]} torus has rows spanning or sharing processes ({len(hosts)} processes, "
                         f"{per_host} devices each); allowed: shape {len(hosts)}x{per_host} (X = hosts, "
                         "Y = devices per host)")


def reduce_flat(buf: jax.Array, topo: Topology, algorithm: str) -> jax.Array:
    """SUM of the 1-D ``buf`` over all replicas with ``algorithm``; call inside ``shard_map`` over ``topo.mesh``.

    ``len(buf)`` must be a multiple of ``pad_multiple(algorithm, topo)``. The XLA-composed algorithms end in
    ``all_gather(to='invarying')`` or ``psum``, so their result is typed replicated (``out_specs=P()`` passes
    ``check_vma``); the ``LINK_LEVEL`` ones move every byte by ``ppermute`` and their result is typed
    per-replica (``out_specs=P(axes)``, or ``check_vma=False`` as the train step does for them).
    """
    fn = _ALGORITHM_FNS[check_algorithm(algorithm)]
    if buf.ndim != 1 or buf.shape[0] % pad_multiple(algorithm, topo):
        raise ValueError(f"reduce_flat: {algorithm} needs a 1-D buffer whose length is a multiple of "
                         f"{pad_multiple(algorithm, topo)}, got shape {buf.shape}")
    return fn(_as_varying(buf, topo.replica_axes), topo)


def _as_varying(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
    """Type ``x`` as varying over every axis in ``axes`` (a replicated input is summed N times, like psum)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "mat", None)  # jax 0.10-0.12: aval.mat.varying; older: aval.vma
    varying = set(mat.varying) if mat is not None else set(getattr(aval, "vma", ()))
    missing = tuple(a for a in axes if a not in varying)
    return lax.pcast(x, missing, to="varying") if missing else x


# --- the algorithms ---------------------------------------------------------------------------------------

def _xla(buf, topo: Topology):
    """The baseline: one psum over every replica axis; XLA picks the algorithm."""
    return lax.psum(buf, topo.replica_axes)


def _two_dim(buf, first: tuple[str, ...], second: tuple[str, ...]):
    """Reduce-scatter along ``first``, all-reduce the shard along ``second``, all-gather along ``first``."""
    shard = lax.psum_scatter(buf, first, scatter_dimension=0, tiled=True)
    shard = lax.psum(shard, second)
    return lax.all_gather(shard, first, axis=0, tiled=True, to="invarying")


def _torus2d(buf, topo: Topology):
    """Mikami et al.: reduce-scatter along X, all-reduce along Y, all-gather along X."""
    return _two_dim(buf, topo.torus_axes.x, topo.torus_axes.y)


def _torus2d_bidir(buf, topo: Topology):
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


def _hierarchical(buf, topo: Topology):
    """Horovod-style: reduce-scatter inside a host (torus Y = one host's devices, rows are kept per process
    by ``Topology``), all-reduce the shard across hosts (X), all-gather inside the host."""
    return _two_dim(buf, topo.torus_axes.y, topo.torus_axes.x)


_ALGORITHM_FNS: dict[str, Callable] = {"xla": _xla, "ring": links.ring, "torus2d": _torus2d,
                                       "torus2d_bidir": _torus2d_bidir, "hierarchical": _hierarchical,
                                       "torus2d_links": links.torus2d_links,
                                       "torus2d_bidir_links": links.torus2d_bidir_links}
assert tuple(_ALGORITHM_FNS) == ALGORITHMS
