"""telemetry_bench: ``labkit bench telemetry``: what emitting costs the training loop, measured side by side.

Owns one measurement: the SPMD demo step timed in alternating blocks without telemetry and with the heaviest
emission labkit does (a ``step`` event and every BN layer's ``bn_stats`` every step, into a JSONL file), plus
the raw cost of one ``emit`` call. Three modes alternate block by block: no telemetry, a ``step`` event per step,
and a ``step`` event plus every layer's ``bn_stats`` per step (the training loop exports bn_stats every K steps). Must not: change what telemetry records.
"""
from __future__ import annotations

import statistics
import tempfile
import time

__all__ = ["HELP", "add_arguments", "run"]

HELP = "telemetry overhead: training step time with and without emission (one run, alternating blocks)"


def add_arguments(parser) -> None:
    from labkit.cli import add_topology_args
    add_topology_args(parser)
    parser.add_argument("--blocks", type=int, default=6, help="alternating blocks of each kind")
    parser.add_argument("--steps", type=int, default=20, help="steps per block")
    parser.add_argument("--model", default="resnet_tiny")


def run(args) -> int:
    import jax
    import optax

    from labkit import bn, telemetry
    from labkit.cli import build_topology
    from labkit.data import digits_batch
    from labkit.models import create_model
    from labkit.train.step import create_train_state, make_train_step

    topo = build_topology(args)
    model = create_model(args.model, num_classes=10, bn_axis_name=topo.bn_axes, capture_bn=True)
    state = jax.device_put(create_train_state(model, optax.sgd(0.05), (16, 16, 3)), topo.replicated)
    images, labels = digits_batch(128, 16)
    images, labels = topo.shard_batch(images), topo.shard_batch(labels)
    step = make_train_step(model, topo, capture_bn=True)
    state, metrics, stats = step(state, images, labels)  # compile
    float(metrics["loss"])

    with tempfile.TemporaryDirectory() as tmp:
        stream = telemetry.EventStream(tmp)
        modes = ("none", "step", "step+bn_stats")
        per_block = {m: [] for m in modes}
        for b in range(len(modes) * args.blocks):
            mode = modes[b % len(modes)]
            t0 = time.perf_counter()
            for i in range(args.steps):
                state, metrics, stats = step(state, images, labels)
                loss = float(metrics["loss"])  # the loop syncs on the loss either way
                if mode != "none":
                    stream.emit("step", step=i, loss=loss, step_time_s=0.0, images_per_s=0.0)
                if mode == "step+bn_stats":
                    for record in bn.stats_records(stats, topo.bn_groups()):
                        stream.emit("bn_stats", step=i, **record)
            per_block[mode].append((time.perf_counter() - t0) / args.steps)
        n_events = len(stream.events())
        t0 = time.perf_counter()
        for i in range(2000):
            stream.emit("step", step=i, loss=1.0, images_per_s=1.0)
        emit_us = (time.perf_counter() - t0) / 2000 * 1e6
        stream.close()

    median = {m: statistics.median(v) for m, v in per_block.items()}
    sim = " (simulated CPU devices: simulation, not hardware)" if jax.default_backend() == "cpu" else ""
    print(f"labkit bench telemetry: {args.model}, {topo.num_replicas} replicas, {args.blocks} blocks x "
          f"{args.steps} steps per mode, modes alternating{sim}")
    print(f"  {'mode':<24}{'step time (median)':>20}{'vs none':>10}")
    for m in modes:
        print(f"  {m:<24}{median[m] * 1e3:>17.2f} ms{median[m] / median['none']:>9.3f}x")
    print(f"  one emit() call: {emit_us:.2f} us; {n_events} events written to JSONL on a background thread")
    return 0
