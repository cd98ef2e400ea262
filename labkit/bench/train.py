"""bench.train: ``labkit bench train``: distributed and telemetry overhead of the training step, side by side.

Owns one measurement, in one process, modes alternating block by block so machine drift hits all alike:
  single    the same model and global batch on one device (BN over the whole batch, no all-reduce),
  replicas  the SPMD step on every device: grouped BN + the chosen all-reduce,
  +telemetry the SPMD step plus the training loop's telemetry cadence (a ``step`` event each step, every
            layer's ``bn_stats`` every ``--bn-stats-every`` steps) into a JSONL file,
  K=k       (with ``--steps-per-loop``) k steps per host call, the window read once per block, against
            ``read/block`` (one step per call, read alike): what ``steps_per_loop`` buys,
plus the cost of one ``emit()`` call. Every mode runs the training loop's own timed loop
(``train.device_loop``: its programs, its stretch runner, one window read per log point).
Inputs are device-resident synthetic batches, so the input pipeline is not part of it (``labkit bench input``).
Must not: change the step it measures.
"""
from __future__ import annotations

import functools
import tempfile

from labkit.bench import timer

__all__ = ["HELP", "add_arguments", "run"]

HELP = "training step: N replicas vs one device (same global batch), and telemetry overhead, in one run"


def add_arguments(parser) -> None:
    from labkit.cli import add_topology_args
    add_topology_args(parser)
    parser.add_argument("--model", default="resnet18_small", help="model name (default resnet18_small)")
    parser.add_argument("--image-size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--global-batch", type=int, default=128, help="global batch (default 128)")
    parser.add_argument("--allreduce", default="torus2d", help="all-reduce algorithm (default torus2d)")
    parser.add_argument("--blocks", type=int, default=5, help="blocks of each mode")
    parser.add_argument("--steps", type=int, default=10, help="steps per block")
    parser.add_argument("--bn-stats-every", type=int, default=20, help="capture BN statistics every N steps (default 20)")
    parser.add_argument("--steps-per-loop", default="1", help="comma-separated K values to compare (each a divisor "
                        "of --steps): K steps per host call with one read per block, against K=1 read alike")


def _setup(topo, args, capture, k: int = 1):
    """The training loop's programs (``train.device_loop.StepPrograms``) on device-resident synthetic batches."""
    import itertools

    import jax
    import optax

    from labkit.collectives import make_reducer
    from labkit.data import synthetic_batches
    from labkit.models import create_model
    from labkit.train.device_loop import StepPrograms, read_window, run_stretch
    from labkit.train.step import create_train_state, make_train_step
    model = create_model(args.model, num_classes=10, bn_axis_name=topo.bn_axes, capture_bn=capture)
    state = jax.device_put(create_train_state(model, optax.sgd(0.01, momentum=0.9),
                                              (args.image_size, args.image_size, 3)), topo.replicated)
    batch = next(synthetic_batches(topo, args.global_batch, image_size=args.image_size, num_classes=10))
    reducer = make_reducer(topo, args.allreduce) if topo.num_replicas > 1 else None
    kw = dict(reduce_gradients=reducer, preprocess=_scale, donate=False)
    programs = StepPrograms(make_train_step(model, topo, **kw),
                            make_train_step(model, topo, capture_bn=True, **kw) if capture else None,
                            k=k, replicated=topo.replicated)
    ctx = {"state": state, "programs": programs, "batches": itertools.repeat(batch)}
    for last in ((False, True) if capture else (False,)):  # compile and warm up every program used
        ctx["state"], window, _, _ = run_stretch(programs, ctx["state"], programs.new_window(), ctx["batches"],
                                                 max(1, k), capture_last=last)
        read_window(window)
    return ctx


def _scale(images):
    return images.astype("float32") / 255.0


def _block(ctx, steps, stream=None, topo=None, every=0, read_every=1):
    """``steps`` steps through the training loop's own stretch runner, the window read every ``read_every``."""
    from labkit import bn
    from labkit.train.device_loop import read_window, run_stretch
    programs = ctx["programs"]
    for i in range(0, steps, read_every):
        capture = bool(stream is not None and every and i % every == 0)
        ctx["state"], window, stats, _ = run_stretch(programs, ctx["state"], programs.new_window(), ctx["batches"],
                                                     min(read_every, steps - i), capture_last=capture)
        metrics = read_window(window)  # the loop's one read per log point
        if stream is not None:
            stream.emit("step", step=i, loss=metrics["loss"], step_time_s=0.0, images_per_s=0.0)
            if capture:
                for record in bn.stats_records(stats, topo.bn_groups()):
                    stream.emit("bn_stats", step=i, **record)
    return ctx["state"]


def run(args) -> int:
    import jax

    from labkit import telemetry
    from labkit.cli import build_topology
    from labkit.mesh import Topology

    topo = build_topology(args)
    one = Topology.build(shape="1x1")  # single-device work: the plan's compute device (the accelerator)
    if args.global_batch % topo.num_replicas:
        raise ValueError(f"global_batch: {args.global_batch} is not divisible by the {topo.num_replicas} replicas")
    ks = sorted({int(k) for k in str(args.steps_per_loop).split(",") if k.strip()} - {1})
    if any(k < 1 or args.steps % k for k in ks):
        raise ValueError(f"--steps-per-loop: {args.steps_per_loop!r}; allowed: divisors of --steps ({args.steps})")
    ctx = {"single": _setup(one, args, capture=False), "replicas": _setup(topo, args, capture=True)}
    ctx.update({f"K={k}": _setup(topo, args, capture=False, k=k) for k in ks})
    with tempfile.TemporaryDirectory() as tmp:
        stream = telemetry.EventStream(tmp)
        modes = {"single": lambda: _block(ctx["single"], args.steps),
                 "replicas": lambda: _block(ctx["replicas"], args.steps),
                 "+telemetry": lambda: _block(ctx["replicas"], args.steps, stream, topo, args.bn_stats_every)}
        # K steps per host call, the window read once per block (log_every_steps = --steps), vs K = 1 read alike
        if ks:
            modes["read/block"] = lambda: _block(ctx["replicas"], args.steps, read_every=args.steps)
        for k in ks:
            modes[f"K={k}"] = functools.partial(_block, ctx[f"K={k}"], args.steps, read_every=args.steps)
        times = timer.interleave(modes, args.blocks, warmup=0)
        t0 = timer.clock()
        for i in range(2000):
            stream.emit("step", step=i, loss=1.0, images_per_s=1.0)
        emit_us = (timer.clock() - t0) / 2000 * 1e6
        stream.close()
    med = {k: t / args.steps for k, t in timer.medians(times).items()}
    sim = jax.default_backend() == "cpu"
    print(f"labkit bench train: {args.model} {args.image_size}x{args.image_size}, global batch "
          f"{args.global_batch}, {args.blocks} blocks x {args.steps} steps per mode, alternating"
          + (" (simulated CPU devices: simulation, not hardware)" if sim else ""))
    print(f"  {topo.num_replicas} replicas = {topo.shape[0]}x{topo.shape[1]} torus, BN group {topo.bn_group}, "
          f"all-reduce {args.allreduce}; single = 1 device, BN over the whole batch")
    print(f"  {'mode':<14}{'step (median)':>15}{'images/s':>12}{'vs single':>11}{'vs replicas':>13}")
    for mode, t in med.items():
        print(f"  {mode:<14}{t * 1e3:>12.2f} ms{args.global_batch / t:>12,.0f}{med['single'] / t:>10.3f}x"
              f"{t / med['replicas']:>12.3f}x")
    for k in ks:
        print(f"  K={k} steps per host call vs 1 (both read once per {args.steps} steps): "
              f"{med['read/block'] / med[f'K={k}']:.3f}x throughput; compile of the K-step program "
              f"{ctx[f'K={k}']['programs'].compile_s:.1f} s vs {ctx['replicas']['programs'].compile_s:.1f} s for the "
              "1-step and capture programs")
    print(f"  throughput, replicas vs single: {med['single'] / med['replicas']:.3f}x; telemetry overhead: "
          f"{100 * (med['+telemetry'] / med['replicas'] - 1):+.2f}% of step time")
    print(f"  one emit() call: {emit_us:.2f} us (JSONL written on a background thread); worst case: "
          f"--bn-stats-every 1 exports every layer's statistics every step")
    return 0
