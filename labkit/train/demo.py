"""train.demo: a short distributed training demo on a fixed batch of real digits.

Owns ``run_demo``: builds a teaching-size ResNet with ``DistributedBatchNorm`` over a topology's BN groups,
trains it with the SPMD step for a few steps on one fixed batch, and reports to telemetry (``run``, ``step``,
``bn_stats``) through the training loop's one timed loop (``train.device_loop``). Must not: read files or
checkpoint.
"""
from __future__ import annotations

import itertools
from typing import Callable

import jax
import optax

from labkit import bn, telemetry
from labkit.data import digits_batch
from labkit.mesh import Topology
from labkit.models import count_params, create_model
from labkit.train.device_loop import StepPrograms, WindowClock, read_window, run_stretch
from labkit.train.step import create_train_state, make_train_step

__all__ = ["run_demo"]


def run_demo(topo: Topology, *, steps: int = 30, batch_size: int = 128, image_size: int = 16,
             model_name: str = "resnet_tiny", learning_rate: float = 0.2, bn_stats_every: int = 5,
             stream: telemetry.EventStream | None = None, log: Callable[[str], None] | None = print) -> dict:
    """Train ``steps`` steps on one fixed batch of ``batch_size`` digits; returns a summary dict.

    Images/s: the training loop's steady-state definition (``train.device_loop.WindowClock``: device-synchronised
    windows, the ones that compiled left out); on CPU they are simulation.
    """
    if batch_size % topo.num_replicas:
        raise ValueError(f"batch_size: {batch_size} is not divisible by the {topo.num_replicas} replicas; "
                         f"allowed: multiples of {topo.num_replicas}")
    if steps < 1:
        raise ValueError(f"steps: must be >= 1, got {steps}")
    stream = stream or telemetry.current()
    log = log or (lambda _msg: None)
    model = create_model(model_name, num_classes=10, bn_axis_name=topo.bn_axes, capture_bn=True)
    state = jax.device_put(create_train_state(model, optax.sgd(learning_rate, momentum=0.9),
                                              (image_size, image_size, 3)), topo.replicated)
    images, labels = digits_batch(batch_size, image_size)
    batch = {"image": topo.shard_batch(images), "label": topo.shard_batch(labels)}
    programs = StepPrograms(make_train_step(model, topo, donate=False),
                            make_train_step(model, topo, capture_bn=True, donate=False), replicated=topo.replicated)
    simulated = topo.simulated
    stream.emit("run", phase="start", model=model_name, params=count_params(state.params),
                replicas=topo.num_replicas, torus=list(topo.shape), bn_group=topo.bn_group,
                global_batch=batch_size, backend=topo.mesh.devices.flat[0].platform, simulated=simulated,
                devices=topo.label)
    log(f"demo: {model_name} ({count_params(state.params):,} params), global batch {batch_size} = "
        f"{batch_size // topo.num_replicas}/replica, BN group {topo.bn_group} "
        f"(BN batch {topo.bn_group * batch_size // topo.num_replicas})")

    # The training loop's own timed loop (train.device_loop), reading the window after every step.
    losses, clock, batches = [], WindowClock(), itertools.repeat(batch)
    for i in range(steps):
        capture = i % bn_stats_every == 0
        state, window, bn_stats, _ = run_stretch(programs, state, programs.new_window(), batches, 1,
                                                 capture_last=capture)
        metrics = read_window(window)
        compiled = programs.take_fresh()
        dt = clock.close(batch_size, compiled)
        losses.append(metrics["loss"])
        stream.emit("step", step=i, loss=metrics["loss"], accuracy=metrics["accuracy"], step_time_s=dt,
                    images_per_s=None if compiled else batch_size / dt, compile=compiled, steps=1)
        if capture:
            for record in bn.stats_records(bn_stats, topo.bn_groups()):
                stream.emit("bn_stats", step=i, **record)
        if i % max(1, steps // 6) == 0 or i == steps - 1:
            log(f"  step {i:3d}  loss {metrics['loss']:.4f}  accuracy {metrics['accuracy']:.3f}")
        clock.mark()  # telemetry export is the demo's, not the step's
    ips = clock.images_per_s or float("nan")
    summary = {"first_loss": losses[0], "last_loss": losses[-1], "steps": steps,
               "images_per_s": ips, "simulated": simulated}
    stream.emit("run", phase="end", **summary)
    label = " (simulated CPU devices: not a hardware number)" if simulated else ""
    log(f"demo: loss {losses[0]:.4f} -> {losses[-1]:.4f}; {ips:,.0f} images/s after compile{label}")
    return summary
