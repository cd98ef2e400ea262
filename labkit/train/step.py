"""train.step: the SPMD training step: grouped-BN forward, loss, explicit gradient all-reduce, update.

Owns the train state, the loss and one step as ``jax.jit(jax.shard_map(...))`` over a ``Topology``'s mesh.
Gradients are reduced *explicitly* by a pluggable reducer (default: ``psum`` over every replica axis), so the
all-reduce algorithm is a knob. Must not: read data, loop over steps, or emit telemetry (callers do).

Why ``pcast(..., to='varying')``: inside ``shard_map``, ``jax.grad`` with respect to replicated (invariant)
parameters silently inserts a psum; casting them to per-replica (varying) first keeps each replica's gradient
local, so the reduction we choose is the only one.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import PartitionSpec as P

from labkit.mesh import Topology
from labkit.train.overlap import backprop_order

__all__ = ["TrainState", "create_train_state", "cross_entropy_loss", "psum_reducer", "make_train_step",
           "make_eval_step"]


class TrainState(train_state.TrainState):
    """Flax TrainState plus BN running statistics."""
    batch_stats: Any = None


def create_train_state(model: flax.linen.Module, tx: optax.GradientTransformation, image_shape,
                       rng: jax.Array | int = 0) -> TrainState:
    """Initialize parameters outside ``shard_map`` (BN needs no collective at init) and replicate them."""
    rng = jax.random.key(rng) if isinstance(rng, int) else rng
    variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, *image_shape), jnp.float32), train=False))(rng)
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables.get("batch_stats", {}))


def cross_entropy_loss(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy against integer labels, with optional label smoothing."""
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing) if label_smoothing \
        else jax.nn.one_hot(labels, num_classes)
    return optax.softmax_cross_entropy(logits, targets).mean()


def psum_reducer(axes: tuple[str, ...]) -> Callable:
    """The baseline gradient reducer: XLA's own all-reduce (``psum``) over ``axes``."""
    return lambda tree: jax.lax.psum(tree, axes)


def make_train_step(model: flax.linen.Module, topo: Topology, *, reduce_gradients: Callable | None = None,
                    label_smoothing: float = 0.0, capture_bn: bool = False, donate: bool = True,
                    preprocess: Callable | None = None):
    """Compile ``step(state, images, labels) -> (state, metrics, bn_stats)`` over ``topo``'s mesh.

    ``images``/``labels`` are global arrays sharded over the replicas (``Topology.shard_batch``).
    ``reduce_gradients(tree) -> tree`` runs inside ``shard_map`` and must *sum* over all replicas.
    With ``capture_bn`` (and a model built with ``capture_bn=True``), ``bn_stats`` holds per-replica BN
    statistics with a leading replica dimension; otherwise it is ``{}``. ``metrics``: global mean ``loss`` and
    ``accuracy``, and ``finite`` (False when the loss, an updated parameter or a BN running statistic is NaN/inf:
    such a state must never reach a checkpoint; computed on the device, read by the loop at its log cadence).
    ``preprocess(images)`` runs on the device first (e.g. ``labkit.data.normalize`` of 0..255 bf16 images).
    """
    axes = topo.replica_axes
    n = topo.num_replicas
    reduce_gradients = reduce_gradients or psum_reducer(axes)
    mutable = ["batch_stats", "bn_stats"] if capture_bn else ["batch_stats"]
    across_groups = tuple(a for a in axes if a not in topo.bn_axes)

    def body(state: TrainState, images, labels):
        images = preprocess(images) if preprocess else images
        local_params = jax.tree_util.tree_map(lambda p: jax.lax.pcast(p, axes, to="varying"), state.params)

        def loss_fn(params):
            logits, new_vars = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, images,
                                              train=True, mutable=mutable)
            loss = cross_entropy_loss(logits, labels, label_smoothing)
            # Global loss = mean over replicas of local means: differentiate loss / n so the replica SUM is
            # the gradient (no extra pass over the summed gradients to divide them).
            return loss / n, (loss, logits, new_vars)

        (_, (loss, logits, new_vars)), grads = jax.value_and_grad(loss_fn, has_aux=True)(local_params)
        # Hand the reducer the gradients in the order backprop makes them (last layer first), so its buckets
        # follow backprop and XLA can start summing the first ones while earlier layers are differentiated.
        leaves, treedef = jax.tree_util.tree_flatten(grads)
        order = backprop_order(lambda p: loss_fn(p)[0], local_params)
        with jax.named_scope("gradient_allreduce"):  # names the reducer's collectives for labkit.profile
            summed = reduce_gradients([leaves[i] for i in order])
        restored = [None] * len(leaves)
        for i, g in zip(order, summed):
            restored[i] = g
        grads = jax.tree_util.tree_unflatten(treedef, restored)
        # Each BN group keeps its own running statistics; average them across groups so the replicated state
        # stays one model (what flax's imagenet example does before eval). Within a group they already agree.
        # (They vary only over the non-BN axes; check_vma verifies that against out_specs=P().)
        batch_stats = new_vars["batch_stats"]
        if across_groups:
            batch_stats = jax.lax.pmean(batch_stats, across_groups)
        new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        loss = jax.lax.pmean(loss, axes)
        metrics = {"loss": loss, "accuracy": jax.lax.pmean(accuracy, axes),
                   "finite": _all_finite(loss, new_state.params, new_state.batch_stats)}
        bn_stats = jax.tree_util.tree_map(lambda v: v[None], new_vars.get("bn_stats", {}))
        return new_state, metrics, bn_stats

    # A link-level reducer (every byte by ppermute) returns sums JAX types per-replica; no collective-free cast
    # to replicated exists, so those steps skip the vma check (``make_reducer(...).invariant``).
    sharded = jax.shard_map(body, mesh=topo.mesh, in_specs=(P(), P(axes), P(axes)),
                            out_specs=(P(), P(), P(axes)),
                            check_vma=getattr(reduce_gradients, "invariant", True))
    return jax.jit(sharded, donate_argnums=(0,) if donate else ())



def _all_finite(*trees) -> jax.Array:
    """True when every value is finite: one sum per leaf (a NaN or inf anywhere makes its sum non-finite)."""
    sums = [jnp.sum(leaf.astype(jnp.float32)) for leaf in jax.tree_util.tree_leaves(trees)]
    return jnp.isfinite(jnp.sum(jnp.stack(sums))) if sums else jnp.array(True)


def make_eval_step(model: flax.linen.Module, topo: Topology, *, preprocess: Callable | None = None):
    """Compile ``eval(state, images, labels, mask) -> {"top1", "top5", "count"}``: global *counts*.

    ``mask`` (1 real, 0 padding) makes every validation image count exactly once; callers divide the summed
    counts. BN uses running statistics, so evaluation needs no BN collective.
    """
    axes = topo.replica_axes

    def body(state: TrainState, images, labels, mask):
        images = preprocess(images) if preprocess else images
        logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, images, train=False)
        mask = mask.astype(jnp.float32)
        top1 = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        k = min(5, logits.shape[-1])
        top5 = jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1).astype(jnp.float32)
        counts = {"top1": jnp.sum(top1 * mask), "top5": jnp.sum(top5 * mask), "count": jnp.sum(mask)}
        return jax.lax.psum(counts, axes)

    return jax.jit(jax.shard_map(body, mesh=topo.mesh, in_specs=(P(), P(axes), P(axes), P(axes)),
                                 out_specs=P()))
