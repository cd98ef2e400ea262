"""collectives.reduce: the two entry points: a pytree reducer for inside ``shard_map``, and ``all_reduce``.

Owns ``make_reducer`` (what ``labkit.train.step.make_train_step(reduce_gradients=...)`` takes) and
``all_reduce`` (a global array whose leading dimension is the replica index -> every row the sum over
replicas), with compiled functions cached per topology and options.
Must not: implement algorithms (``collectives.algorithms``) or fusion (``collectives.fuse``), time, or emit.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from labkit.collectives.algorithms import LINK_LEVEL, check_algorithm, check_hosts, pad_multiple, reduce_flat
from labkit.collectives.fuse import DEFAULT_BUCKET_BYTES, reduce_tree
from labkit.mesh import Topology

__all__ = ["make_reducer", "all_reduce"]


def make_reducer(topo: Topology, algorithm: str, *, bucket_bytes: int | None = DEFAULT_BUCKET_BYTES,
                 reduce_dtype=None) -> Callable[[Any], Any]:
    """A function ``tree -> tree`` that SUMS every leaf over all replicas of ``topo`` with ``algorithm``.

    Call it inside ``jax.shard_map`` over ``topo.mesh`` (all replica axes manual), e.g.
    ``make_train_step(model, topo, reduce_gradients=make_reducer(topo, "torus2d_links"))``.
    Leaves are fused into buckets of at most ``bucket_bytes`` (``None``: one per dtype) and padded; shapes and
    dtypes come back unchanged. ``reduce_dtype=jnp.float32`` sums bf16/fp16 leaves in fp32.
    The reducer's ``invariant`` attribute says how its results are typed: True (XLA-composed algorithms) =
    replicated, so ``out_specs=P()`` passes ``check_vma``; False (``LINK_LEVEL``: every byte by ``ppermute``) =
    per-replica, so a caller returning them replicated runs its ``shard_map`` with ``check_vma=False``.
    """
    check_algorithm(algorithm)
    check_hosts(algorithm, topo)
    multiple = pad_multiple(algorithm, topo)
    if bucket_bytes is not None and bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes: must be a positive number of bytes or None, got {bucket_bytes}")
    flat = functools.partial(reduce_flat, topo=topo, algorithm=algorithm)

    def reduce_gradients(tree):
        return reduce_tree(tree, flat, multiple, bucket_bytes, reduce_dtype)

    reduce_gradients.__name__ = f"reduce_{algorithm}"
    reduce_gradients.invariant = algorithm not in LINK_LEVEL
    return reduce_gradients


def all_reduce(x, topo: Topology, algorithm: str = "xla", *, bucket_bytes: int | None = DEFAULT_BUCKET_BYTES,
               reduce_dtype=None) -> jax.Array:
    """``x`` (or a pytree of such) with leading dimension = replica index -> same shape, every row = the sum.

    ``x`` may be a global ``jax.Array`` sharded over the replicas (``topo.batch_sharding``) or a host array
    (placed for you). Results are per-replica rows (``out_specs=P(axes)``), so every algorithm runs as written.
    """
    check_algorithm(algorithm)
    n = topo.num_replicas
    leaves = jax.tree_util.tree_leaves(x)
    for leaf in leaves:
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] != n:
            raise ValueError(f"all_reduce: every leaf needs a leading replica dimension of {n} (the replicas of "
                             f"the {topo.shape[0]}x{topo.shape[1]} torus), got shape {np.shape(leaf)}")
    x = jax.tree_util.tree_map(lambda a: _place(a, topo), x)
    return _compiled(topo, algorithm, bucket_bytes, None if reduce_dtype is None else np.dtype(reduce_dtype))(x)


def _place(a, topo: Topology) -> jax.Array:
    if isinstance(a, jax.Array) and isinstance(a.sharding, NamedSharding) and a.sharding.mesh == topo.mesh \
            and a.sharding.spec == P(topo.replica_axes):
        return a
    return jax.device_put(a, topo.batch_sharding)


@functools.lru_cache(maxsize=64)
def _compiled(topo: Topology, algorithm: str, bucket_bytes, reduce_dtype) -> Callable:
    axes = topo.replica_axes
    reducer = make_reducer(topo, algorithm, bucket_bytes=bucket_bytes, reduce_dtype=reduce_dtype)

    def body(tree):
        rows = reducer(jax.tree_util.tree_map(lambda b: b[0], tree))  # my block is [1, ...]: drop the 1
        return jax.tree_util.tree_map(lambda r: r[None], rows)

    return jax.jit(jax.shard_map(body, mesh=topo.mesh, in_specs=P(axes), out_specs=P(axes)))
