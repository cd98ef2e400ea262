"""train.optim: the paper's optimizers and learning-rate schedules, built from optax.

Owns: LARS (BN parameters and biases excluded from the trust ratio and from weight decay), SGD with Nesterov
momentum, linear warmup + polynomial decay, warmup + stepwise decay, and the linear scaling rule (in
``Config.learning_rate``). Must not: know about devices or the training loop.
"""
from __future__ import annotations

import jax
import optax

from labkit.config import Config

__all__ = ["create_schedule", "create_optimizer", "decay_mask"]


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


def create_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
    """LARS or SGD-Nesterov per ``config.optimizer``, with weight decay on kernels only."""
    schedule = create_schedule(config, steps_per_epoch)
    if config.optimizer == "lars":
        return optax.lars(schedule, weight_decay=config.weight_decay, weight_decay_mask=decay_mask,
                          trust_ratio_mask=decay_mask, momentum=config.momentum)
    return optax.chain(optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
                       optax.sgd(schedule, momentum=config.momentum, nesterov=True))
