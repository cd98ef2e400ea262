"""profile: where a training step's time goes, read from a ``jax.profiler`` trace of a few real steps.

Owns ``profile_training`` (trace a few steps of a config's real training step and input), ``profile_step`` (the
same for any jitted step and batch iterator), ``step_breakdown`` (a trace -> seconds and fractions per category)
and ``classify_collectives`` (the compiled step's collective ops by category). Categories, per step (means over the traced steps; device times are means over devices):
  compute             every XLA op of the step that is not a collective
  bn_collectives      the BN group sums, forward and backward (ops under the ``bn_group_sum`` scope, labkit.bn)
  gradient_allreduce  the gradient reducer's collectives (ops under the ``gradient_allreduce`` scope, train.step)
  other_collectives   the rest: running-statistics and metric means
  unattributed        device time that cannot be tied to an instruction of the step: device-line events without
                      ``args.hlo_op`` (trace formats that do not carry the op metadata), and events whose
                      ``hlo_op`` is not an instruction of the step's modules. Never counted as compute.
  input_wait          the host waiting for the next device batch (``labkit_input_wait`` annotations)
  host                the rest of the step's wall time: dispatch, Python, idle devices
How ops are tied to categories: each trace event of a device op carries ``args.hlo_op`` (the HLO instruction
name) and ``args.hlo_module``; the compiled module's proto gives every instruction's opcode and ``op_name``
metadata, i.e. the jaxpr's name stack (``.../DistributedBatchNorm_0/bn_group_sum/psum``). No HLO text is parsed.
A device line is a trace process named ``/device:...`` (the profiler's GPU and TPU lines); on CPU the device ops
run on host threads and are known by their ``hlo_op``. Where a device has XProf's ``XLA Ops`` line, only that
line counts: its ``Steps``, ``XLA Modules``, framework-op and name-scope lines show the same time again; an event
there without ``hlo_op`` is known by its name (XProf names op events after the HLO instruction). The TPU path is
checked against XProf's own synthetic TPU plane, not yet against a trace from a real TPU.
On CPU the devices are simulated threads: collective time includes waiting for the slowest thread (simulation).
Must not: change training state or the training loop (it builds its own copy of the step).
"""
from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["CATEGORIES", "profile_training", "profile_step", "step_breakdown", "classify_collectives", "read_trace",
           "emit_breakdown"]

CATEGORIES = ("compute", "bn_collectives", "gradient_allreduce", "other_collectives", "unattributed", "input_wait",
              "host")
_DEVICE = CATEGORIES[:5]  # the categories of device time (mean over devices)
STEP_EVENT = "labkit_step"          # a StepTraceAnnotation around one whole step (input + dispatch + device)
INPUT_EVENT = "labkit_input_wait"   # a TraceAnnotation around fetching the next device batch
_SCOPES = (("bn_group_sum", "bn_collectives"), ("gradient_allreduce", "gradient_allreduce"))
_COLLECTIVES = {"all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all",
                "collective-broadcast", "ragged-all-to-all"}


def classify_collectives(compiled) -> dict[str, str]:
    """{HLO instruction name: category} for every collective op of a compiled (``.lower(...).compile()``) step.

    Reads the modules' ``HloModuleProto`` (opcode and ``op_name`` metadata of each instruction); async pairs
    (``all-reduce-start``/``-done``) count as their collective.
    """
    from tensorflow.compiler.xla.service import hlo_pb2  # the XLA proto schema, shipped with TensorFlow
    out: dict[str, str] = {}
    for module in compiled.runtime_executable().hlo_modules():
        proto = hlo_pb2.HloModuleProto.FromString(module.as_serialized_hlo_module_proto())
        for comp in proto.computations:
            for ins in comp.instructions:
                base = ins.opcode.removesuffix("-start").removesuffix("-done")
                if base not in _COLLECTIVES:
                    continue
                out[ins.name] = next((cat for scope, cat in _SCOPES if scope in ins.metadata.op_name),
                                     "other_collectives")
    return out


def _module_names(compiled) -> set[str]:
    return {m.name() if callable(getattr(m, "name", None)) else m.name
            for m in compiled.runtime_executable().hlo_modules()}


def _instruction_names(compiled) -> set[str]:
    """Every instruction name of the compiled step's modules (what a trace event's ``hlo_op`` may name)."""
    from tensorflow.compiler.xla.service import hlo_pb2
    names: set[str] = set()
    for module in compiled.runtime_executable().hlo_modules():
        proto = hlo_pb2.HloModuleProto.FromString(module.as_serialized_hlo_module_proto())
        names.update(ins.name for comp in proto.computations for ins in comp.instructions)
    return names


def read_trace(logdir: str | os.PathLike) -> dict:
    """The newest ``*.trace.json.gz`` that ``jax.profiler.trace(logdir)`` wrote, as a dict."""
    files = sorted(Path(logdir).glob("plugins/profile/*/*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"profile: no plugins/profile/*/*.trace.json.gz under {str(logdir)!r}; "
                                "was it written by jax.profiler.trace?")
    with gzip.open(files[-1], "rt") as f:
        return json.load(f)


def _top_level(events: list[dict]) -> list[dict]:
    """Drop events nested inside an earlier event of the same thread (a thunk inside a while/call thunk)."""
    out, end = [], {}
    for e in sorted(events, key=lambda e: (e["pid"], e["tid"], e["ts"], -e.get("dur", 0))):
        key = (e["pid"], e["tid"])
        if e["ts"] + e.get("dur", 0) <= end.get(key, float("-inf")):
            continue
        end[key] = e["ts"] + e.get("dur", 0)
        out.append(e)
    return out


def _device_pids(trace: dict) -> set:
    """Trace processes that are device lines: named ``/device:...`` by a ``process_name`` metadata event."""
    return {e.get("pid") for e in trace.get("traceEvents", [])
            if e.get("ph") == "M" and e.get("name") == "process_name"
            and str(e.get("args", {}).get("name", "")).startswith("/device:")}


# XProf's device planes repeat the ops on derived lines (xla/tsl/profiler/utils/xplane_schema.cc): when a device
# has an "XLA Ops" line, only it is counted; its other lines would count the same time again.
_OP_LINE = "XLA Ops"


_NO_MODULE = "<op line>"  # an XLA Ops event named by its instruction carries no module: ``instructions`` decides


def _named_op(e: dict) -> dict:
    """An ``XLA Ops`` event without ``hlo_op``: XProf names such an event after its HLO instruction (a TPU plane's
    op events carry ``program_id``/``symbol_id`` stats instead of ``hlo_op``), so its name is the op."""
    args = e.get("args", {})
    if "hlo_op" in args or e.get("ph") != "X":
        return e
    return {**e, "args": {**args, "hlo_op": e.get("name")}}


def _op_and_derived_lines(trace: dict) -> tuple[set, set]:
    """(pid, tid) of every ``XLA Ops`` line, and of every other line of a device that has one (read from the
    trace's ``thread_name`` metadata once)."""
    names = {(e.get("pid"), e.get("tid")): str(e.get("args", {}).get("name", ""))
             for e in trace.get("traceEvents", []) if e.get("ph") == "M" and e.get("name") == "thread_name"}
    op_lines = {key for key, name in names.items() if name == _OP_LINE}
    with_op_line = {pid for pid, _ in op_lines}
    return op_lines, {key for key in names if key[0] in with_op_line and key not in op_lines}


def step_breakdown(trace: dict, collectives: dict[str, str], modules: set[str] | None = None,
                   instructions: set[str] | None = None) -> dict:
    """Per-step time by category from a trace (``read_trace``) and ``classify_collectives``' table.

    Returns plain numbers: ``steps``, ``devices``, ``step_s`` (mean wall time of a ``labkit_step``),
    ``seconds`` and ``fractions`` by ``CATEGORIES`` (fractions sum to 1), ``overlap_s`` (device and input time
    beyond the step's wall time, which ``host`` cannot absorb: 0 when the parts add up to ``step_s``),
    ``collective_ops`` (distinct collective ops seen per category) and ``unattributed_events`` (device events
    per step, summed over devices, whose time went to ``unattributed``). ``modules``: the step's HLO module names
    (other programs' ops are ignored); None = every module. ``instructions``: every instruction name of those
    modules; an ``hlo_op`` outside it is unattributed (None: every ``hlo_op`` not in ``collectives`` is compute).
    """
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    steps = sorted((e for e in events if e.get("name") == STEP_EVENT), key=lambda e: e["ts"])
    if not steps:
        raise ValueError(f"profile: the trace has no {STEP_EVENT!r} events (trace steps inside "
                         f"jax.profiler.StepTraceAnnotation({STEP_EVENT!r}, step_num=i))")
    device_pids, (op_lines, derived) = _device_pids(trace), _op_and_derived_lines(trace)
    events = [_named_op(e) if (e.get("pid"), e.get("tid")) in op_lines else e for e in events]
    ops = _top_level([e for e in events if (e.get("pid"), e.get("tid")) not in derived
                      and (("hlo_op" in e.get("args", {})
                            and (modules is None
                                 or e["args"].get("hlo_module", _NO_MODULE) in modules | {_NO_MODULE}))
                           or ("hlo_op" not in e.get("args", {}) and "hlo_module" not in e.get("args", {})
                               and e.get("pid") in device_pids))])  # (a whole-module span is not an op)
    waits = [e for e in events if e.get("name") == INPUT_EVENT]
    totals = dict.fromkeys(CATEGORIES, 0.0)
    seen: dict[str, set] = {c: set() for c in ("bn_collectives", "gradient_allreduce", "other_collectives")}
    devices, overlap, unattributed = set(), 0.0, 0
    for s in steps:
        lo, hi = s["ts"], s["ts"] + s["dur"]
        per_device: dict[Any, dict[str, float]] = {}
        for e in ops:
            if lo <= e["ts"] < hi:
                args = e.get("args", {})
                dev = args.get("device_ordinal", e["pid"])
                cat = _category(args.get("hlo_op"), collectives, instructions)
                per_device.setdefault(dev, dict.fromkeys(_DEVICE, 0.0))[cat] += e["dur"] * 1e-6
                if cat == "unattributed":
                    unattributed += 1
                elif cat != "compute":
                    seen[cat].add(args["hlo_op"])
        devices |= set(per_device)
        part = {c: sum(d[c] for d in per_device.values()) / max(1, len(per_device)) for c in _DEVICE}
        part["input_wait"] = sum(e["dur"] for e in waits if lo <= e["ts"] < hi) * 1e-6
        rest = s["dur"] * 1e-6 - sum(part.values())
        part["host"] = max(0.0, rest)
        overlap += max(0.0, -rest)
        for c in CATEGORIES:
            totals[c] += part[c]
    n = len(steps)
    seconds = {c: totals[c] / n for c in CATEGORIES}
    whole = sum(seconds.values())
    return {"steps": n, "devices": len(devices), "step_s": sum(s["dur"] for s in steps) * 1e-6 / n,
            "seconds": seconds, "fractions": {c: (seconds[c] / whole if whole else 0.0) for c in CATEGORIES},
            "overlap_s": overlap / n, "collective_ops": {c: len(v) for c, v in seen.items()},
            "unattributed_events": unattributed / n}


def _category(hlo_op: str | None, collectives: dict[str, str], instructions: set[str] | None) -> str:
    """A device event's category: its collective's, compute for a known instruction, else unattributed."""
    if hlo_op is None:
        return "unattributed"  # a device-line event without the op metadata
    if hlo_op in collectives:
        return collectives[hlo_op]
    return "compute" if instructions is None or hlo_op in instructions else "unattributed"


def profile_step(step, state, batches, *, steps: int = 3, warmup: int = 2,
                 logdir: str | os.PathLike | None = None) -> dict:
    """Trace ``steps`` calls of a jitted train step ``step(state, images, labels) -> (state, metrics, ...)``
    (after ``warmup`` untraced calls; the first compiles) fed from ``batches`` (an iterator of device batches
    ``{"image", "label"}``: the time to fetch one is ``input_wait``); returns ``step_breakdown``'s numbers.

    ``logdir`` keeps the trace (open it in TensorBoard or Perfetto); default: a temporary directory.
    """
    import jax
    if steps < 1 or warmup < 1:
        raise ValueError(f"profile: steps and warmup must be >= 1, got steps={steps}, warmup={warmup}")
    batch = next(batches)
    compiled = step.lower(state, batch["image"], batch["label"]).compile()
    for i in range(warmup):
        batch = next(batches) if i else batch
        state, metrics, *_ = compiled(state, batch["image"], batch["label"])
        jax.block_until_ready(metrics)
    with tempfile.TemporaryDirectory(prefix="labkit-profile-") as tmp:
        where = Path(logdir) if logdir is not None else Path(tmp)
        with jax.profiler.trace(str(where)):
            for i in range(steps):
                with jax.profiler.StepTraceAnnotation(STEP_EVENT, step_num=i):
                    with jax.profiler.TraceAnnotation(INPUT_EVENT):
                        batch = next(batches)
                    state, metrics, *_ = compiled(state, batch["image"], batch["label"])
                    jax.block_until_ready((state, metrics))
        trace = read_trace(where)
    return step_breakdown(trace, classify_collectives(compiled), _module_names(compiled),
                          _instruction_names(compiled))


def profile_training(config, *, steps: int = 3, warmup: int = 2, logdir: str | os.PathLike | None = None,
                     topo=None) -> dict:
    """``profile_step`` on ``config``'s training step (model, BN groups, all-reduce) fed by its real input
    pipeline, from a freshly initialized state (a profile, not a run); adds the config's labels and
    ``simulated``. ``topo``: default ``Topology.build`` from the config (simulated CPU devices if needed).
    """
    import jax
    from labkit.collectives import make_reducer
    from labkit.data import normalize
    from labkit.mesh import Topology, simulate_devices
    from labkit.models import create_model
    from labkit.train.input import create_train_iterator, describe_data
    from labkit.train.optim import create_optimizer
    from labkit.train.step import create_train_state, make_train_step
    if topo is None:
        simulate_devices(config.cpu_devices)
        topo = Topology.build(shape=config.shape or None, bn_group=config.bn_group)
    config.check_for(topo.num_replicas)
    info = describe_data(config)
    model = create_model(config.model, num_classes=info.num_classes, width=config.width, dtype=config.dtype,
                         bn_axis_name=topo.bn_axes)
    per_epoch = max(1, info.train_images // config.global_batch)
    state = jax.device_put(create_train_state(model, create_optimizer(config, per_epoch),
                                              (config.image_size,) * 2 + (3,), rng=config.seed), topo.replicated)
    step = make_train_step(model, topo, reduce_gradients=make_reducer(topo, config.allreduce),
                           label_smoothing=config.label_smoothing, preprocess=normalize, donate=False)
    iterator = create_train_iterator(config, topo, info)
    try:
        out = profile_step(step, state, iterator, steps=steps, warmup=warmup, logdir=logdir)
    finally:
        close = getattr(iterator, "close", None)
        if close:
            close()
    out.update(model=config.model, global_batch=config.global_batch, bn_group=config.bn_group,
               allreduce=config.allreduce, replicas=topo.num_replicas, simulated=topo.simulated)
    return out


def emit_breakdown(breakdown: dict, stream=None, step: int | None = None) -> dict:
    """Record a breakdown as a ``step_breakdown`` telemetry event (``stream``: default the current stream)."""
    from labkit import telemetry
    fields = {k: v for k, v in breakdown.items()}
    if stream is None:
        return telemetry.emit("step_breakdown", step=step, **fields)
    return stream.emit("step_breakdown", step=step, **fields)
