"""collectives: all-reduce algorithms written out in plain JAX, usable as the training step's gradient reducer.

Public names: ``ALGORITHMS`` (``xla``, ``ring``, ``torus2d``, ``torus2d_bidir``, ``hierarchical``,
``torus2d_links``, ``torus2d_bidir_links``), ``make_reducer(topo, algorithm)`` (a pytree SUM over replicas,
for inside ``shard_map``), ``all_reduce(x, topo, algorithm)`` (global arrays whose leading dimension is the
replica index) and ``ring_order(shape)``.
Submodules: ``algorithms`` (registry, XLA-composed algorithms), ``links`` (hop-by-hop ppermute algorithms),
``fuse`` (pytree buckets), ``reduce`` (entry points),
``costmodel`` (alpha-beta model, fit, pod projection). ``labkit bench collectives`` is ``labkit.bench.collectives``.
Must not: import the CLI, telemetry, training or benchmark code.
"""
from labkit.collectives.algorithms import ALGORITHMS, ring_order
from labkit.collectives.reduce import all_reduce, make_reducer

__all__ = ["ALGORITHMS", "all_reduce", "make_reducer", "ring_order"]
