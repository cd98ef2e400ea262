"""cli: the ``labkit`` command.

Owns argument parsing and what each subcommand prints. Every subcommand that uses devices first does the
start-up that must precede any backend (``start_jax``: the simulated CPU count, so that a laptop or CI box
shows the same 8-replica lab as a TPU host; the GPU latency-hiding flags; joining a multi-host job). ``labkit
train`` leaves it to the preset and the training loop, which do it in the same order; ``labkit run`` leaves it
to the notebook kernels it starts (they are the JAX processes, through ``labkit.lab.setup``).
Must not: hold logic that a notebook would also need (that lives in the library modules).
"""
from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main", "add_topology_args", "build_topology", "start_jax"]

_DESCRIPTION = ("Train, measure and watch the three systems ideas of 'Image Classification at Supercomputer "
                "Scale' (distributed batch norm, an optimized input pipeline, 2-D torus all-reduce) on a TPU, "
                "a GPU, or 8 simulated CPU devices.")


def add_topology_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cpu-devices", type=int, default=int(os.environ.get("LABKIT_CPU_DEVICES", 8)),
                   help="simulated devices when running on CPU (default 8, env LABKIT_CPU_DEVICES)")
    p.add_argument("--shape", default=None, help="torus shape XxY, e.g. 2x4 (default: most square)")
    p.add_argument("--bn-group", type=int, default=2, help="replicas per BN group (default 2)")


def start_jax(cpu_devices: int) -> int:
    """What comes before any backend exists: ``cpu_devices`` simulated CPU devices, XLA's latency-hiding
    flags on GPU, and joining a multi-host job (``labkit.multihost.initialize_multihost``). Returns the process count."""
    from labkit import mesh, multihost
    from labkit.train.overlap import enable_latency_hiding
    mesh.simulate_devices(cpu_devices)
    enable_latency_hiding()
    return multihost.initialize_multihost()


def build_topology(args):
    """Topology from the common ``--cpu-devices/--shape/--bn-group`` flags (for plugin subcommands too)."""
    from labkit import mesh
    start_jax(args.cpu_devices)
    return mesh.Topology.build(shape=args.shape, bn_group=args.bn_group)


def _cmd_info(args) -> int:
    import jax

    from labkit.mesh import device_plan
    topo = build_topology(args)
    devices = jax.devices()
    print(f"labkit on jax {jax.__version__}: backend {jax.default_backend()}, {len(devices)} devices "
          f"({devices[0].device_kind}), process {jax.process_index()} of {jax.process_count()}")
    print(device_plan().line())
    print(topo.describe())
    return 0


def _cmd_demo(args) -> int:
    from labkit import telemetry
    from labkit.train.demo import run_demo
    topo = build_topology(args)
    print(topo.describe(), end="\n\n")
    stream = telemetry.open_run(args.workdir) if args.workdir else telemetry.current()
    try:
        summary = run_demo(topo, steps=args.steps, batch_size=args.batch_size, model_name=args.model)
    finally:
        stream.close()
    if args.workdir:
        print(f"telemetry: {stream.path}")
    return 0 if summary["last_loss"] < summary["first_loss"] else 1


def _cmd_train(args) -> int:
    import signal
    import threading
    from labkit.presets import get_preset
    from labkit.runs import discard_failed_start, interrupted_line
    from labkit.train.loop import train_and_evaluate
    config = get_preset(args.config).override(args.set or [])
    stop = threading.Event()
    resume = " ".join(["labkit", *(sys.argv[1:] if sys.argv[1:2] == ["train"] else ["train", "..."])])

    def _on_sigint(signum, frame):  # first Ctrl-C: checkpoint after this step and stop; a second one: now
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
    previous = signal.signal(signal.SIGINT, _on_sigint) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        summary = train_and_evaluate(config, args.workdir, force=args.force, max_steps=args.max_steps,
                                     stop_event=stop)
    except KeyboardInterrupt:
        print(interrupted_line("train", args.workdir, resume), file=sys.stderr)
        return 130
    except Exception:
        discard_failed_start(args.workdir)  # a start that trained nothing keeps nothing: the fix is not refused
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if summary["stopped"] == "stopped":
        print(interrupted_line("train", args.workdir, resume), file=sys.stderr)
        return 130
    print(f"summary: {args.workdir}/summary.json; telemetry: {args.workdir}/telemetry.jsonl")
    return 0 if summary["stopped"] in ("target", "epochs", "max_steps") else 1


def _cmd_config_keys(args) -> int:
    """Every config key with its type, the preset's value and the allowed values."""
    import dataclasses
    import typing
    from labkit.config import ALLOWED, Config
    from labkit.presets import get_preset
    config, hints = get_preset(args.config), typing.get_type_hints(Config)
    print(f"config keys (values of preset {args.config}); set them with labkit train --set KEY=VALUE "
          "or labkit run -p KEY VALUE")
    for f in dataclasses.fields(Config):
        allowed = f"  allowed: {', '.join(map(str, ALLOWED[f.name]))}" if f.name in ALLOWED else ""
        print(f"  {f.name:<24} {hints[f.name].__name__:<6} {getattr(config, f.name)!r}{allowed}")
    return 0


# Subcommands implemented in their own modules: (group, name) -> module exposing
# ``add_arguments(parser)`` and ``run(args) -> int``, and a one-line ``HELP``. Imported only when used.
_PLUGINS = {
    ("bench", "input"): "labkit.bench.input",
    ("bench", "collectives"): "labkit.bench.collectives",
    ("bench", "train"): "labkit.bench.train",
    ("bench", "peers"): "labkit.bench.peers",
    ("data", "convert"): "labkit.data.convert",
    ("dashboard", None): "labkit.dashboard.serve",
    ("run", None): "labkit.runs",
}
_GROUP_HELP = {"bench": "measure: input pipeline, collectives, training step, telemetry overhead, peers",
               "config": "the config keys that train --set and run -p accept",
               "data": "data sets: convert image folders to ImageNet-format TFRecords",
               "dashboard": "serve or save the live Panel dashboard of a run directory",
               "run": "execute a notebook with papermill into runs/<name>/ and index the results"}


def _add_plugins(sub) -> None:
    import importlib
    groups = {}
    for (group, name), module_name in _PLUGINS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and module_name.startswith(e.name):  # that part of labkit is not built yet
                continue
            raise
        if name is None:
            p = sub.add_parser(group, help=_GROUP_HELP[group])
        else:
            if group not in groups:
                gp = sub.add_parser(group, help=_GROUP_HELP[group])
                groups[group] = gp.add_subparsers(dest=f"{group}_command", required=True)
            p = groups[group].add_parser(name, help=module.HELP)
        module.add_arguments(p)
        p.set_defaults(func=module.run)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labkit", description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="backend, devices, processes, the torus and its BN groups")
    add_topology_args(p)
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("demo", help="a short distributed training demo on a fixed batch of real digits")
    add_topology_args(p)
    p.add_argument("--steps", type=int, default=30, help="training steps (default 30)")
    p.add_argument("--batch-size", type=int, default=128, help="global batch, split over the replicas (default 128)")
    p.add_argument("--model", default="resnet_tiny", help="model name from labkit.models (default resnet_tiny)")
    p.add_argument("--workdir", default="runs/demo", help="where telemetry.jsonl goes ('' for none)")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("train", help="a full training run from a preset, with overrides")
    p.add_argument("--config", default="cpu8-digits", help="preset: cpu8-digits (default), colab, "
                   "tpu-vm-slice, tpu-pod-resnet50, gpu-resnet50, fmnist-* (see labkit/presets.py)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key (repeatable); the keys are listed by `labkit config keys`")
    p.add_argument("--workdir", default="runs/train", help="checkpoints, telemetry.jsonl, summary.json")
    p.add_argument("--force", action="store_true", help="resume a workdir even if its config differs")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N steps of this invocation")
    p.set_defaults(func=_cmd_train)
    keys = sub.add_parser("config", help=_GROUP_HELP["config"]).add_subparsers(dest="config_command", required=True)
    p = keys.add_parser("keys", help="list every config key with its type, value and allowed values")
    p.add_argument("--config", default="cpu8-digits", help="preset whose values to show (default cpu8-digits)")
    p.set_defaults(func=_cmd_config_keys)
    _add_plugins(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:  # bad input: show the message, not a traceback
        print(f"labkit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # python -m labkit.cli
    sys.exit(main())
