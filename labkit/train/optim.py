"""train.optim: the paper's optimizers and learning-rate schedules, built from optax.

Owns: LARS as in the paper's reference code (``lars``: trust ratio eta*|w| / (|g| + wd*|w|); BN parameters
and biases excluded from the trust ratio and from weight decay), SGD with Nesterov momentum, linear warmup +
polynomial decay, warmup + stepwise decay, and the linear scaling rule (in ``Config.learning_rate``).
Must not: know about devices or the training loop.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from labkit.config import Config

__all__ = ["create_schedule", "create_optimizer", "decay_mask", "lars", "LarsState"]


def create_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
    """Learning rate per step: linear warmup to ``config.learning_rate``, then poly decay to 0 or /10 steps."""
    peak = config.learning_rate
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    total = max(int(round(config.epochs * steps_per_epoch)), warmup + 1)
    warm = optax.linear_schedule(0.0, peak, warmup) if warmup else optax.constant_schedule(peak)
    if config.lr_schedule == "poly":
        after = optax.polynomial_schedule(peak, 0.0, config.decay_power, total - warmup)
    else:
        boundaries = {int(round(e * steps_per_epoch)) - warmup: 0.1 for e in config.step_epochs
                      if int(round(e * steps_per_epoch)) > warmup}
        after = optax.piecewise_constant_schedule(peak, boundaries)
    return optax.join_schedules([warm, after], [warmup]) if warmup else after


def decay_mask(params):
    """True for weights that get weight decay and the LARS trust ratio: kernels (ndim > 1), not BN or biases."""
    return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


class LarsState(NamedTuple):
    """The step count (for the schedule) and the momentum buffer v."""
    count: jax.Array
    velocity: Any


def lars(learning_rate: float | optax.Schedule, *, weight_decay: float, momentum: float = 0.9, eta: float = 0.001,
         mask: Callable[[Any], Any] = decay_mask) -> optax.GradientTransformation:
    """LARS as in the paper's reference code (You et al.; TF's TPU ``LARSOptimizer``), per weight tensor w:

    trust = eta*|w| / (|g| + wd*|w|)  (1 where |w| or |g| is 0);  v <- m*v + lr*trust*(g + wd*w);  w <- w - v.
    Where ``mask(params)`` is False (BN parameters, biases): plain momentum SGD, v <- m*v + lr*g, no decay.
    Why not ``optax.lars``: it divides by |g + wd*w|, which is smaller than |g| + wd*|w| whenever g and w point
    apart (late in training), giving up to ~1.41x the reference's effective learning rate.
    """
    lr_at = learning_rate if callable(learning_rate) else (lambda _: learning_rate)

    def init(params):
        return LarsState(jnp.zeros([], jnp.int32), jax.tree_util.tree_map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("lars: update needs params (the trust ratio and weight decay use |w|)")
        lr = lr_at(state.count)

        def velocity(g, w, v, layer_wise):
            if not layer_wise:
                return momentum * v + lr * g
            w_norm, g_norm = jnp.linalg.norm(w), jnp.linalg.norm(g)
            trust = jnp.where((w_norm > 0) & (g_norm > 0), eta * w_norm / (g_norm + weight_decay * w_norm), 1.0)
            return momentum * v + lr * trust * (g + weight_decay * w)

        v = jax.tree_util.tree_map(velocity, grads, params, state.velocity, mask(params))
        return jax.tree_util.tree_map(jnp.negative, v), LarsState(state.count + 1, v)

    return optax.GradientTransformation(init, update)


def create_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
    """LARS (the reference formula, ``lars``) or SGD-Nesterov per ``config.optimizer``; decay on kernels only."""
    schedule = create_schedule(config, steps_per_epoch)
    if config.optimizer == "lars":
        return lars(schedule, weight_decay=config.weight_decay, momentum=config.momentum)
    return optax.chain(optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
                       optax.sgd(schedule, momentum=config.momentum, nesterov=True))
