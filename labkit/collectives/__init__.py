"""collectives: all-reduce algorithms written out in plain JAX, usable as the training step's gradient reducer.

Public names: ``ALGORITHMS`` (``xla``, ``ring``, ``torus2d``, ``torus2d_bidir``, ``hierarchical``),
``make_reducer(topo, algorithm)`` (a pytree SUM over replicas, for inside ``shard_map``), ``all_reduce(x, topo,
algorithm)`` (global arrays whose leading dimension is the replica index) and ``ring_order(shape)``.
Submodules: ``algorithms`` (flat-buffer algorithms), ``fuse`` (pytree buckets), ``reduce`` (entry points),
``costmodel`` (alpha-beta model, fit, pod projection), ``bench`` (``labkit bench collectives``).
Must not: import the CLI, telemetry or training code (the bench module does its own imports when run).
"""
from labkit.collectives.algorithms import ALGORITHMS, ring_order
from labkit.collectives.reduce import all_reduce, make_reducer

__all__ = ["ALGORITHMS", "all_reduce", "make_reducer", "ring_order"]
