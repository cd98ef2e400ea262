"""Programs that lower for the real chips: the ResNet-50 bfloat16 training step exported for TPU and CUDA.

``jax.export.export(step, platforms=("tpu", "cuda"))`` lowers a program for TPU and CUDA on a CPU-only machine
(real-stacks.md section 4): it proves the program lowers for those platforms (no CPU-only ops, valid shardings
and collectives on a 2x4 mesh of 8 devices); it does not compile or run it. Nothing here needs an accelerator.

What is exported is labkit's own training step (``make_train_step`` with ``make_reducer(topo, algorithm)``, the
model built as ``train_and_evaluate`` builds it: ``capture_bn=True``, bfloat16 compute) for every all-reduce
algorithm, and grouped BN over each group size the torus allows. The matrix uses a *short* ResNet-50: the same
``ResNet`` class, bottleneck blocks, ``DistributedBatchNorm`` layers, stride-2 projections and head, with one block
per stage instead of (3, 4, 6, 3) and a quarter of the width: the code path and every kind of layer and collective
are the full model's, only repeated fewer times (a full ResNet-50 export takes ~5-8 s per algorithm here, the
short one ~2 s). One full-size export (marked slow) checks that the repetition changes nothing.
Besides "it lowered", each export is checked against the traced program: the exported module has exactly the
collective kinds that the jaxpr of the same step has (read from the MLIR module's operations, not from text).
"""
from __future__ import annotations

import functools
from collections import Counter

import jax
import jax.numpy as jnp
import optax
import pytest

from labkit.collectives import ALGORITHMS, make_reducer
from labkit.mesh import Topology
from labkit.models import create_model
from labkit.train.step import create_train_state, make_train_step
from tests.collectives.jaxpr_walk import base_name, collectives

PLATFORMS = ("tpu", "cuda")
BATCH, SIZE = 16, 64  # 2 images per replica, 64 px: the smallest size all four stride-2 stages still halve
SHORT = dict(stage_sizes=(1, 1, 1, 1), width=0.25)
# jaxpr collective -> the StableHLO operation it lowers to (StableHLO spec names)
_STABLEHLO = {"psum": "stablehlo.all_reduce", "pmax": "stablehlo.all_reduce", "pmin": "stablehlo.all_reduce",
              "all_gather": "stablehlo.all_gather", "psum_scatter": "stablehlo.reduce_scatter",
              "ppermute": "stablehlo.collective_permute", "all_to_all": "stablehlo.all_to_all"}


@functools.lru_cache(maxsize=None)
def _inputs(bn_group: int, short: bool):
    """Topology, model and the step's abstract inputs (shapes, dtypes, shardings: nothing is initialized)."""
    topo = Topology.build(shape=(2, 4), bn_group=bn_group)
    kw = SHORT if short else {}
    model = create_model("resnet50", num_classes=1000, dtype="bfloat16", bn_axis_name=topo.bn_axes,
                         capture_bn=True, **kw)
    shapes = jax.eval_shape(lambda: create_train_state(model, optax.sgd(0.1, momentum=0.9), (SIZE, SIZE, 3)))
    state = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=topo.replicated),
                                   shapes)
    images = jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 3), jnp.bfloat16, sharding=topo.batch_sharding)
    labels = jax.ShapeDtypeStruct((BATCH,), jnp.int32, sharding=topo.batch_sharding)
    return topo, model, (state, images, labels)


def _module_ops(exported) -> Counter:
    """Operation names of the exported StableHLO module, nested regions included (MLIR's own parser)."""
    from jax._src.interpreters import mlir
    from jax._src.lib.mlir import ir
    found: Counter = Counter()

    def walk(op):
        for region in op.regions:
            for block in region.blocks:
                for inner in block.operations:
                    found[inner.operation.name] += 1
                    walk(inner.operation)

    with mlir.make_ir_context():
        walk(ir.Module.parse(exported.mlir_module()).operation)
    return found


def _export_and_check(algorithm: str, bn_group: int, *, short: bool = True, capture: bool = False):
    topo, model, args = _inputs(bn_group, short)
    step = make_train_step(model, topo, reduce_gradients=make_reducer(topo, algorithm), capture_bn=capture,
                           donate=False)
    exported = jax.export.export(step, platforms=PLATFORMS)(*args)
    assert exported.platforms == PLATFORMS and exported.nr_devices == 8
    state_out = exported.out_avals[:len(jax.tree_util.tree_leaves(args[0]))]
    assert [(a.shape, a.dtype) for a in state_out] == [(s.shape, s.dtype) for s in jax.tree_util.tree_leaves(args[0])]
    traced = {base_name(name) for name, *_ in collectives(jax.make_jaxpr(step)(*args))}
    ops = _module_ops(exported)
    lowered = {name for name in ops if name in set(_STABLEHLO.values())}
    assert lowered == {_STABLEHLO[t] for t in traced}, (algorithm, bn_group, traced, dict(ops))
    return traced


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_all_reduce_algorithm_lowers_for_tpu_and_cuda(algorithm):
    """Grouped BN (g=2) with each algorithm; link-level ones must keep their neighbour hops in the program."""
    traced = _export_and_check(algorithm, 2)
    assert "all_gather" in traced  # BN's one forward collective per layer
    assert ("ppermute" in traced) == (algorithm in ("ring", "torus2d_links", "torus2d_bidir_links"))


@pytest.mark.parametrize("bn_group", [1, 4, 8])
def test_every_bn_group_lowers_with_bn_capture(bn_group):
    """The other BN groups of a 2x4 torus (2 is above), through the capturing step the loop runs at BN exports."""
    traced = _export_and_check("torus2d", bn_group, capture=True)
    assert {"psum_scatter", "psum", "all_gather"} <= traced


@pytest.mark.slow
def test_full_size_resnet50_lowers():
    """The whole (3, 4, 6, 3) ResNet-50 at full width, with the paper's all-reduce done link by link."""
    _export_and_check("torus2d_bidir_links", 8, short=False)
