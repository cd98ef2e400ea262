"""train.loop: ``train_and_evaluate(config, workdir)``: the run the paper is about, end to end.

Owns the order of things: topology -> data -> model/optimizer -> restore -> steps (grouped BN, the configured
all-reduce) -> telemetry on its cadences -> evaluation -> early stop at the target -> checkpoints -> summary.
The device stays busy: between *host points* (log cadence, BN export, collective timing, evaluation,
checkpoints, the end) steps are only dispatched, ``steps_per_loop`` at a time (``train.device_loop``), and
nothing is copied back; at a host point the window (loss, accuracy, the on-device NaN/inf guard over loss,
parameters and BN statistics) is read once, and a checkpoint is written only after that guard passed.
Two rates, one definition (``train.device_loop.WindowClock``): ``images_per_s`` is the steady-state rate over
windows between device-synchronised reads (windows that compiled, evaluations and checkpoint writes left out;
the input wait, BN export, all-reduce timing and logging in), ``images_per_s_wall`` is all images over all wall time; both and ``time_to_accuracy_s`` count from the
run's first start, across resumes. Must not: define models, collectives or pipeline stages, or render
anything (dashboards read the telemetry this writes).
"""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import jax

from labkit import bn, storage, telemetry
from labkit.collectives import make_reducer
from labkit.config import Config
from labkit.mesh import Topology, allowed_bn_groups, simulate_devices
from labkit.multihost import initialize_multihost
from labkit.models import count_params, create_model
from labkit.train.checkpoint import Checkpointer, check_workdir_config
from labkit.train.device_loop import StepPrograms, WindowClock, read_window, run_stretch
from labkit.train.input import (InputPositions, create_eval_dataset, create_train_iterator, describe_data,
                                eval_batches)
from labkit.train.measure import make_allreduce_timer, mfu, peak_flops_per_device, step_flops
from labkit.train.optim import create_optimizer, create_schedule
from labkit.train.overlap import enable_latency_hiding
from labkit.train.step import create_train_state, make_eval_step, make_train_step

__all__ = ["train_and_evaluate", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


def train_and_evaluate(config: Config, workdir: str | Path, *, force: bool = False,
                       stream: telemetry.EventStream | None = None, stop_event: threading.Event | None = None,
                       max_steps: int | None = None, log: Callable[[str], None] | None = print) -> dict:
    """Train and evaluate per ``config`` in ``workdir`` (resuming from its last checkpoint); returns the summary.

    ``stream``: telemetry destination (default: a new ``EventStream(workdir)``, i.e. ``telemetry.jsonl``).
    ``stop_event``: set it (e.g. from a notebook button) to checkpoint and stop at the next host point (at most
    ``log_every_steps`` steps later: between host points steps are only dispatched).
    ``max_steps``: stop after this many steps *of this call* (as if the process were stopped there).
    """
    log = log or (lambda _msg: None)
    workdir = workdir if storage.is_url(workdir) else Path(workdir)  # Path() would collapse gs:// to gs:/
    simulate_devices(config.cpu_devices)
    enable_latency_hiding()  # GPU only, before the backend starts: the all-reduce may overlap backprop
    initialize_multihost()
    topo = Topology.build(shape=config.shape or None, bn_group=config.bn_group)
    config.check_for(topo.num_replicas, allowed_bn_groups(topo.shape))
    check_workdir_config(workdir, config, force=force)
    finished = _finished_summary(workdir, config)
    if finished is not None:  # nothing to train: say so, and touch nothing (summary, telemetry, checkpoints)
        top1 = finished.get("top1")
        log(f"train: the run in {workdir} already finished ({finished['stopped']} after {finished.get('steps')} "
            f"steps; " + (f"top-1 {top1:.4f}" if isinstance(top1, (int, float)) else "no evaluation data") +
            f"); nothing to train, {storage.join(workdir, 'summary.json')} left untouched")
        return finished
    own_stream = stream is None
    stream = stream or telemetry.EventStream(workdir)
    run = _Run(config, workdir, topo, stream, log)
    try:
        return run.execute(stop_event, max_steps)
    finally:
        run.close()
        if own_stream:
            stream.close()


def _finished_summary(workdir, config: Config) -> dict | None:
    """The workdir's summary when its run has nothing left to do under ``config``: it reached its target, or it
    ran every step that ``config`` asks for (a resume with more epochs, which needs ``force``, trains on)."""
    try:
        summary = json.loads(storage.read_text(storage.join(workdir, "summary.json")))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict):
        return None
    if summary.get("stopped") == "target" and config.target_accuracy:
        return summary
    if summary.get("stopped") == "epochs":
        info = describe_data(config)
        total = max(1, int(round(config.epochs * max(1, info.train_images // config.global_batch))))
        if int(summary.get("steps") or 0) >= total:
            return summary
    return None


class _Run:
    """One call of train_and_evaluate: holds the compiled steps, the state and the counters."""

    def __init__(self, config: Config, workdir: Path, topo: Topology, stream, log):
        from labkit.data import normalize
        self.config, self.workdir, self.topo, self.stream, self.log = config, workdir, topo, stream, log
        self.wall_start = time.perf_counter()
        self.info = describe_data(config)
        self.steps_per_epoch = max(1, self.info.train_images // config.global_batch)
        self.total_steps = max(1, int(round(config.epochs * self.steps_per_epoch)))
        self.eval_every = max(1, int(round(config.eval_every_epochs * self.steps_per_epoch)))
        self.ckpt_every = config.checkpoint_every_steps or self.eval_every
        self.model = create_model(config.model, num_classes=self.info.num_classes, width=config.width,
                                  dtype=config.dtype, bn_axis_name=topo.bn_axes, capture_bn=True)
        self.schedule = create_schedule(config, self.steps_per_epoch)
        tx = create_optimizer(config, self.steps_per_epoch)
        shape = (config.image_size, config.image_size, 3)
        self.state = jax.device_put(create_train_state(self.model, tx, shape, rng=config.seed), topo.replicated)
        self.reducer = make_reducer(topo, config.allreduce)
        self.time_allreduce = None  # built at the first collective timing
        self.eval_ds = None  # built at the first evaluation
        kw = dict(reduce_gradients=self.reducer, label_smoothing=config.label_smoothing, preprocess=normalize,
                  donate=False)  # traced inside the step programs, which donate the state
        self.programs = StepPrograms(make_train_step(self.model, topo, **kw),
                                     make_train_step(self.model, topo, capture_bn=True, **kw),
                                     k=config.steps_per_loop, replicated=topo.replicated)
        self.eval_step = make_eval_step(self.model, topo, preprocess=normalize)
        self.ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
        # Checkpointed progress; the *_s / train_images entries are cumulative over every call (resumes).
        self.meta = {"step": 0, "best_top1": 0.0, "time_to_accuracy_s": None, "wall_s": 0.0,
                     "train_images": 0, "train_time_s": 0.0, "input_position": None}
        self.before = dict(self.meta)  # what earlier calls had accumulated
        self.clock = WindowClock()
        self.iterator = None
        self.positions = None
        self.last_eval: dict = {}
        self.last_batch = None  # shapes for the cost analysis

    # ------------------------------------------------------------------------------------------------------
    def execute(self, stop_event, max_steps) -> dict:
        cfg, topo = self.config, self.topo
        if self.ckpt.latest_step() is not None:
            self.state, meta = self.ckpt.restore(self.state)
            self.meta.update(meta)
            self.before = dict(self.meta)
            self.log(f"resumed from the checkpoint at step {self.meta['step']} in {self.workdir}")
        self.clock = WindowClock(int(self.before["train_images"]), float(self.before["train_time_s"]))
        start = int(self.meta["step"])
        simulated = topo.simulated  # the devices that run the steps (one-chip plan: not the default backend)
        self.stream.emit("run", step=start, phase="start", config=cfg.to_dict(), model=cfg.model,
                         dataset=cfg.dataset, global_batch=cfg.global_batch, bn_group=cfg.bn_group,
                         allreduce=cfg.allreduce, replicas=topo.num_replicas,
                         torus=list(topo.shape), backend=topo.mesh.devices.flat[0].platform, simulated=simulated,
                         device_kind=topo.mesh.devices.flat[0].device_kind, devices=topo.label,
                         processes=jax.process_count(),
                         params=count_params(self.state.params), num_classes=self.info.num_classes,
                         train_images=self.info.train_images, steps_per_epoch=self.steps_per_epoch,
                         total_steps=self.total_steps, resumed_from=start, steps_per_loop=cfg.steps_per_loop,
                         jax_version=jax.__version__)
        self.log(f"train: {cfg.model} on {cfg.dataset} ({self.info.train_images:,} images, "
                 f"{self.info.num_classes} classes), {topo.num_replicas} replicas on a {topo.shape[0]}x"
                 f"{topo.shape[1]} torus, BN group {cfg.bn_group}, all-reduce {cfg.allreduce}, "
                 f"{self.total_steps} steps of {cfg.global_batch}")
        if cfg.target_accuracy and self.meta["time_to_accuracy_s"] is not None:
            self.log(f"the run in {self.workdir} already reached its target; nothing to train")
            return self._finish("target")
        end = self.total_steps if max_steps is None else min(self.total_steps, start + max_steps)
        if self.info.source != "synthetic" and cfg.deterministic:
            # Non-deterministic input cannot be replayed exactly: a resume starts a fresh shuffle seeded by the
            # step instead of saving tf.data's buffers (the shuffle buffer: ~1.8 GB of ImageNet JPEGs per host).
            self.positions = InputPositions(
                f"{self.workdir}/input_positions", keep=cfg.keep_checkpoints + 2,
                wanted=lambda p: p > start and (p % self.ckpt_every == 0 or p % self.eval_every == 0 or p == end))
        self.iterator = create_train_iterator(cfg, topo, self.info, start_step=start, stream=self.stream,
                                              positions=self.positions)
        reason = "epochs"
        progress = _progress(self.total_steps, start) if sys.stdout.isatty() else None
        step, window, wait = start, self.programs.new_window(), 0.0
        self.clock.mark()
        while step < end:
            last = self._next_host_step(step, end)
            capture = self._captures(last)
            self.state, window, bn_stats, w = run_stretch(self.programs, self.state, window, self.iterator,
                                                          last - step + 1, capture_last=capture)
            wait += w
            # ---- host point: the one read of this window ------------------------------------------------
            metrics = read_window(window)
            window = self.programs.new_window()
            compiled = self.programs.take_fresh()
            seconds = self.clock.close((last - step + 1) * cfg.global_batch, compiled)
            if not metrics["finite"]:
                self._stop_non_finite(step, last, metrics["loss"])
            self._emit_step(last, last - step + 1, metrics, seconds, compiled, wait)
            wait, step, done = 0.0, last + 1, last + 1
            self._host_work(last, bn_stats)
            if progress is not None:
                progress.update(done - progress.n)
                progress.set_postfix(loss=f"{metrics['loss']:.3f}", top1=f"{self.last_eval.get('top1', 0):.3f}")
            reached = False
            self.clock.pause()  # evaluation and checkpoints are phases of their own, not step time
            if done % self.eval_every == 0 or done == self.total_steps:
                reached = self._evaluate(done)
            if done % self.ckpt_every == 0 or done == end or reached:
                self._save(done)
            self.clock.resume()
            if reached:
                reason = "target"
                break
            if stop_event is not None and stop_event.is_set():
                reason = "stopped"
                if done % self.ckpt_every and done != end:
                    self._save(done)
                break
        else:
            if end < self.total_steps:
                reason = "max_steps"
        if progress is not None:
            progress.close()
        return self._finish(reason)

    def _next_host_step(self, step: int, end: int) -> int:
        """The first step at or after ``step`` after which the host must look (steps before it only dispatch)."""
        log_every = max(1, self.config.log_every_steps)
        for s in range(step, end):
            done = s + 1
            if (s % log_every == 0 or self._captures(s) or self._times_collective(s) or done == end
                    or done % self.eval_every == 0 or done % self.ckpt_every == 0):
                return s
        return end - 1

    def _captures(self, step: int) -> bool:
        every = self.config.bn_stats_every_steps
        return bool(every) and step % every == 0

    def _times_collective(self, step: int) -> bool:
        every = self.config.collective_every_steps
        return bool(every) and step % every == 0

    # ------------------------------------------------------------------------------------------------------
    def _emit_step(self, step, steps, metrics, seconds, compiled, wait) -> None:
        """One ``step`` event per host point: the window's last step, its rate, and the wall clock."""
        cfg = self.config
        rate = None if compiled else steps * cfg.global_batch / seconds
        self.stream.emit("step", step=step, loss=metrics["loss"], accuracy=metrics["accuracy"],
                         lr=float(self.schedule(step)), images_per_s=rate, steps=steps,
                         step_time_s=seconds / steps, window_s=seconds, input_wait_s=wait, compile=compiled,
                         wall_s=self._wall(), epoch=step / self.steps_per_epoch)
        if step % max(1, self.total_steps // 10) < steps and not sys.stdout.isatty():
            self.log(f"  step {step:5d}/{self.total_steps}  loss {metrics['loss']:.4f}  "
                     f"lr {float(self.schedule(step)):.4f}")

    def _host_work(self, step, bn_stats) -> None:
        """Telemetry that needs the host: BN statistics export and the in-training all-reduce timing."""
        cfg = self.config
        if bn_stats is not None:
            records = bn.stats_records(bn_stats, self.topo.bn_groups())  # collective across processes
            for record in records if jax.process_index() == 0 else ():  # every replica's row: one host emits
                self.stream.emit("bn_stats", step=step, **record)
        if self._times_collective(step):
            if self.time_allreduce is None:  # shapes never change: compile the timed all-reduce once
                self.time_allreduce = make_allreduce_timer(self.reducer, self.state.params, self.topo)
                self.programs.fresh = True  # its compile lands in the next window: not a steady window
            timing = self.time_allreduce()
            self.stream.emit("collective", step=step, algorithm=cfg.allreduce, replicas=self.topo.num_replicas,
                             source="train", **timing)

    def _evaluate(self, done: int) -> bool:
        """Evaluate on the whole validation set; True when the target accuracy is reached."""
        cfg = self.config
        t0 = time.perf_counter()
        totals = {"top1": 0.0, "top5": 0.0, "count": 0.0}
        if self.eval_ds is None:  # built once: the record count and pipeline are not redone each eval
            self.eval_ds = create_eval_dataset(cfg, self.info)
        sums = None
        for batch in eval_batches(self.eval_ds, self.topo):
            counts = self.eval_step(self.state, batch["image"], batch["label"], batch["mask"])
            sums = counts if sums is None else jax.tree_util.tree_map(lambda a, b: a + b, sums, counts)
        if sums is not None:  # one read per evaluation
            totals = {k: float(v) for k, v in jax.device_get(sums).items()}
        if not totals["count"]:
            return False
        reached = bool(cfg.target_accuracy) and totals["top1"] / totals["count"] >= cfg.target_accuracy
        if reached and self.meta["time_to_accuracy_s"] is None:
            self.meta["time_to_accuracy_s"] = self._wall()
        result = {"top1": totals["top1"] / totals["count"], "top5": totals["top5"] / totals["count"],
                  "count": int(totals["count"]), "eval_time_s": time.perf_counter() - t0,
                  "epoch": done / self.steps_per_epoch, "wall_s": self._wall(),
                  "time_to_accuracy_s": self.meta["time_to_accuracy_s"]}
        self.last_eval = result
        self.meta["best_top1"] = max(self.meta["best_top1"], result["top1"])
        self.stream.emit("eval", step=done, **result)
        self.log(f"  eval at step {done}: top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f} "
                 f"({result['count']} images)")
        return reached

    def _save(self, step: int) -> None:
        """Checkpoint asynchronously (training goes on while Orbax writes); the caller checked finiteness."""
        position = self.positions.wait_for(step) if self.positions is not None else None
        self.meta.update(step=int(step), wall_s=self._wall(), train_images=int(self.clock.images),
                         train_time_s=float(self.clock.seconds), input_position=position)
        self.ckpt.save(step, self.state, dict(self.meta))

    def _wall(self) -> float:
        """Wall seconds of the whole run so far, compile and evaluation included, across resumes."""
        return float(self.before["wall_s"]) + time.perf_counter() - self.wall_start

    def _stop_non_finite(self, first: int, last: int, loss: float) -> None:
        self.ckpt.wait()
        good = self.ckpt.latest_step()
        folder = storage.join(self.workdir, "checkpoints")
        where = f"step {good} in {folder}" if good is not None else "none (no checkpoint yet)"
        at = f"step {last}" if first == last else f"steps {first}..{last}"
        message = (f"loss, parameters or BN statistics became NaN/inf at {at} (loss {loss}): training stopped. "
                   f"The last good checkpoint is {where}; the bad state was not saved. Try a lower learning "
                   f"rate (peak {self.config.learning_rate}).")
        self.stream.emit("run", step=last, phase="end", error=message)
        raise NonFiniteLossError(message)

    def _finish(self, reason: str) -> dict:
        cfg, topo = self.config, self.topo
        self.ckpt.wait()
        steady = self.clock.images_per_s
        wall = self._wall()
        steps = int(self.meta["step"])
        wall_rate = steps * cfg.global_batch / wall if wall > 0 and steps else None
        flops = step_flops(self._cost_analysis()) if self.programs.compiled else None
        peak, peak_note = peak_flops_per_device(topo.mesh.devices.flat[0].device_kind, dtype=cfg.dtype)
        utilisation = mfu(flops, steady, cfg.global_batch, peak)
        simulated = topo.simulated
        summary = {
            "stopped": reason, "steps": steps, "epochs": steps / self.steps_per_epoch,
            "top1": self.last_eval.get("top1"), "top5": self.last_eval.get("top5"),
            "best_top1": self.meta["best_top1"], "target_accuracy": cfg.target_accuracy or None,
            "time_to_accuracy_s": self.meta["time_to_accuracy_s"], "wall_time_s": wall,
            "images_per_s": steady, "images_per_s_wall": wall_rate, "train_time_s": self.clock.seconds,
            "images_per_s_per_replica": steady / topo.num_replicas if steady else None,
            "images_per_s_per_device": steady / topo.num_replicas if steady else None, "devices": topo.label,
            "compile_time_s": self.programs.compile_s, "steps_per_loop": cfg.steps_per_loop,
            "flops_per_step_per_device": flops, "peak_flops_per_device": peak, "mfu": utilisation,
            "mfu_reason": (f"{peak_note}; FLOPs from XLA's cost analysis of the compiled step" if utilisation
                           else "no FLOP count from XLA" if not flops else
                           "no steady-state window yet" if not steady else peak_note),
            "skipped_records": getattr(self.iterator, "skipped", 0),
            "input_wait_s": (self.iterator.summary()["input_wait_s"] if hasattr(self.iterator, "summary") else 0.0),
            "simulated": simulated, "workdir": str(self.workdir),
        }
        self.stream.emit("run", step=self.meta["step"], phase="end", **summary)
        if jax.process_index() == 0:
            storage.write_text(storage.join(self.workdir, "summary.json"), json.dumps(summary, indent=1))
        label = " (simulated CPU devices: not a hardware number)" if simulated else ""
        tta = summary["time_to_accuracy_s"]
        self.log(f"train: {reason} after {summary['steps']} steps; top-1 {summary['top1'] or 0:.4f}"
                 + (f"; reached {cfg.target_accuracy:.2%} in {tta:.1f} s wall from the first start" if tta else "")
                 + (f"; {steady:,.0f} images/s steady" if steady else "")
                 + (f", {wall_rate:,.0f} images/s wall" if wall_rate else "") + label)
        return summary

    def _cost_analysis(self):
        """XLA's cost analysis of the compiled one-step program (compiled now if only K-step programs ran)."""
        spec = jax.ShapeDtypeStruct
        shape = (self.config.global_batch, self.config.image_size, self.config.image_size, 3)
        img = spec(shape, jax.numpy.bfloat16, sharding=self.topo.batch_sharding)
        lbl = spec(shape[:1], jax.numpy.int32, sharding=self.topo.batch_sharding)
        try:
            return self.programs.cost_analysis(self.state, self.programs.new_window(), img, lbl)
        except Exception:  # noqa: BLE001 - FLOPs are a nicety; never fail a finished run over them
            return None

    def close(self) -> None:
        if hasattr(self.iterator, "close"):
            self.iterator.close()
        self.ckpt.close()


def _progress(total: int, start: int):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
