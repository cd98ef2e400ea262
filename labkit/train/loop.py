"""train.loop: ``train_and_evaluate(config, workdir)``: the run the paper is about, end to end.

Owns the order of things: topology -> data -> model/optimizer -> restore -> steps (grouped BN, the configured
all-reduce) -> telemetry on its cadences -> evaluation -> early stop at the target -> checkpoints -> summary.
Throughput is honest: the training clock runs only inside steady-state steps (input wait included; compile,
evaluation, checkpoints and micro-benchmarks excluded), and images/s is total images over total clock time,
across resumes, never a mean of per-step rates. Must not: define models, collectives or
pipeline stages, or render anything (dashboards read the telemetry this writes).
"""
from __future__ import annotations

import json
import math
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import jax

from labkit import bn, telemetry
from labkit.collectives import make_reducer
from labkit.config import Config
from labkit.mesh import Topology, allowed_bn_groups, initialize_multihost, simulate_devices
from labkit.models import count_params, create_model
from labkit.train.checkpoint import Checkpointer, check_workdir_config
from labkit.train.input import create_eval_dataset, create_train_iterator, describe_data, eval_batches
from labkit.train.measure import make_allreduce_timer, peak_flops_per_device, step_flops
from labkit.train.optim import create_optimizer, create_schedule
from labkit.train.step import create_train_state, make_eval_step, make_train_step

__all__ = ["train_and_evaluate", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


def train_and_evaluate(config: Config, workdir: str | Path, *, force: bool = False,
                       stream: telemetry.EventStream | None = None, stop_event: threading.Event | None = None,
                       max_steps: int | None = None, log: Callable[[str], None] | None = print) -> dict:
    """Train and evaluate per ``config`` in ``workdir`` (resuming from its last checkpoint); returns the summary.

    ``stream``: telemetry destination (default: a new ``EventStream(workdir)``, i.e. ``telemetry.jsonl``).
    ``stop_event``: set it (e.g. from a notebook button) to checkpoint and stop after the current step.
    ``max_steps``: stop after this many steps *of this call* (as if the process were stopped there).
    """
    log = log or (lambda _msg: None)
    workdir = Path(workdir)
    simulate_devices(config.cpu_devices)
    initialize_multihost()
    topo = Topology.build(shape=config.shape or None, bn_group=config.bn_group)
    config.check_for(topo.num_replicas, allowed_bn_groups(topo.shape))
    check_workdir_config(workdir, config, force=force)
    own_stream = stream is None
    stream = stream or telemetry.EventStream(workdir)
    run = _Run(config, workdir, topo, stream, log)
    try:
        return run.execute(stop_event, max_steps)
    finally:
        run.close()
        if own_stream:
            stream.close()


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
        kw = dict(reduce_gradients=self.reducer, label_smoothing=config.label_smoothing, preprocess=normalize)
        self.steps = {False: make_train_step(self.model, topo, **kw),
                      True: make_train_step(self.model, topo, capture_bn=True, **kw)}
        self.eval_step = make_eval_step(self.model, topo, preprocess=normalize)
        self.ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
        # Checkpointed progress; the *_s / train_images entries are cumulative over every call (resumes).
        self.meta = {"step": 0, "best_top1": 0.0, "time_to_accuracy_s": None, "wall_s": 0.0,
                     "train_images": 0, "train_time_s": 0.0}
        self.before = dict(self.meta)  # what earlier calls had accumulated
        self.images, self.train_time = 0, 0.0  # this call's steady-state images and clock
        self.iterator = None
        self.last_eval: dict = {}

    # ------------------------------------------------------------------------------------------------------
    def execute(self, stop_event, max_steps) -> dict:
        cfg, topo = self.config, self.topo
        if self.ckpt.latest_step() is not None:
            self.state, self.meta = self.ckpt.restore(self.state)
            self.before = dict(self.meta)
            self.log(f"resumed from the checkpoint at step {self.meta['step']} in {self.workdir}")
        start = int(self.meta["step"])
        simulated = topo.simulated  # the devices that run the steps, not the default backend (one-chip plan)
        self.stream.emit("run", step=start, phase="start", config=cfg.to_dict(), model=cfg.model,
                         dataset=cfg.dataset, global_batch=cfg.global_batch, bn_group=cfg.bn_group,
                         allreduce=cfg.allreduce, replicas=topo.num_replicas,
                         torus=list(topo.shape), backend=topo.mesh.devices.flat[0].platform, simulated=simulated,
                         device_kind=topo.mesh.devices.flat[0].device_kind, devices=topo.label,
                         processes=jax.process_count(),
                         params=count_params(self.state.params), num_classes=self.info.num_classes,
                         train_images=self.info.train_images, steps_per_epoch=self.steps_per_epoch,
                         total_steps=self.total_steps, resumed_from=start, jax_version=jax.__version__)
        self.log(f"train: {cfg.model} on {cfg.dataset} ({self.info.train_images:,} images, "
                 f"{self.info.num_classes} classes), {topo.num_replicas} replicas on a {topo.shape[0]}x"
                 f"{topo.shape[1]} torus, BN group {cfg.bn_group}, all-reduce {cfg.allreduce}, "
                 f"{self.total_steps} steps of {cfg.global_batch}")
        if cfg.target_accuracy and self.meta["time_to_accuracy_s"] is not None:
            self.log(f"the run in {self.workdir} already reached its target; nothing to train")
            return self._finish("target")
        self.iterator = create_train_iterator(cfg, topo, self.info, start_step=start, stream=self.stream)
        reason, compiled = "epochs", set()
        progress = _progress(self.total_steps, start) if sys.stdout.isatty() else None
        end = self.total_steps if max_steps is None else min(self.total_steps, start + max_steps)
        for step in range(start, end):
            if stop_event is not None and stop_event.is_set():
                reason = "stopped"
                break
            t_step = time.perf_counter()
            batch = next(self.iterator)
            capture = bool(cfg.bn_stats_every_steps) and step % cfg.bn_stats_every_steps == 0
            first = capture not in compiled
            compiled.add(capture)
            self.state, metrics, bn_stats = self.steps[capture](self.state, batch["image"], batch["label"])
            loss = float(metrics["loss"])  # one sync a step: honest step times and the NaN guard
            interval = time.perf_counter() - t_step
            if not (math.isfinite(loss) and bool(metrics["params_finite"])):
                self._stop_non_finite(step, loss)
            if not first:  # a step that compiled is not training time
                self.images += cfg.global_batch
                self.train_time += interval
            self._emit_step(step, loss, metrics, interval, first, capture, bn_stats)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.3f}", top1=f"{self.last_eval.get('top1', 0):.3f}")
            done = step + 1
            reached = False
            if done % self.eval_every == 0 or done == self.total_steps:
                reached = self._evaluate(done)
            if done % self.ckpt_every == 0 or done == end or reached:
                self._save(done)
            if reached:
                reason = "target"
                break
        else:
            if end < self.total_steps:
                reason = "max_steps"
        if progress is not None:
            progress.close()
        if reason == "stopped":
            self._save(step)
        return self._finish(reason)

    # ------------------------------------------------------------------------------------------------------
    def _emit_step(self, step, loss, metrics, interval, first, capture, bn_stats) -> None:
        cfg = self.config
        wait = (getattr(self.iterator, "last", None) or {}).get("wait_s", 0.0)
        if step % cfg.log_every_steps == 0 or first:
            self.stream.emit("step", step=step, loss=loss, accuracy=float(metrics["accuracy"]),
                             lr=float(self.schedule(step)), images_per_s=cfg.global_batch / interval,
                             step_time_s=interval, input_wait_s=wait, compile=first,
                             epoch=step / self.steps_per_epoch)
        if capture:
            records = bn.stats_records(bn_stats, self.topo.bn_groups())  # collective across processes
            for record in records if jax.process_index() == 0 else ():  # every replica's row: one host emits
                self.stream.emit("bn_stats", step=step, **record)
        if cfg.collective_every_steps and step % cfg.collective_every_steps == 0:
            if self.time_allreduce is None:  # shapes never change: compile the timed all-reduce once
                self.time_allreduce = make_allreduce_timer(self.reducer, self.state.params, self.topo)
            timing = self.time_allreduce()
            self.stream.emit("collective", step=step, algorithm=cfg.allreduce, replicas=self.topo.num_replicas,
                             source="train", **timing)
        if step % max(1, self.total_steps // 10) == 0 and not sys.stdout.isatty():
            self.log(f"  step {step:5d}/{self.total_steps}  loss {loss:.4f}  lr {float(self.schedule(step)):.4f}")

    def _evaluate(self, done: int) -> bool:
        """Evaluate on the whole validation set; True when the target accuracy is reached."""
        cfg = self.config
        t0 = time.perf_counter()
        totals = {"top1": 0.0, "top5": 0.0, "count": 0.0}
        if self.eval_ds is None:  # built once: the record count and pipeline are not redone each eval
            self.eval_ds = create_eval_dataset(cfg, self.info)
        for batch in eval_batches(self.eval_ds, self.topo):
            counts = self.eval_step(self.state, batch["image"], batch["label"], batch["mask"])
            totals = {k: totals[k] + float(counts[k]) for k in totals}
        if not totals["count"]:
            return False
        result = {"top1": totals["top1"] / totals["count"], "top5": totals["top5"] / totals["count"],
                  "count": int(totals["count"]), "eval_time_s": time.perf_counter() - t0,
                  "epoch": done / self.steps_per_epoch}
        self.last_eval = result
        self.meta["best_top1"] = max(self.meta["best_top1"], result["top1"])
        self.stream.emit("eval", step=done, **result)
        self.log(f"  eval at step {done}: top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f} "
                 f"({result['count']} images)")
        if cfg.target_accuracy and result["top1"] >= cfg.target_accuracy and self.meta["time_to_accuracy_s"] is None:
            self.meta["time_to_accuracy_s"] = self._wall()
            return True
        return False

    def _save(self, step: int) -> None:
        """Checkpoint asynchronously: training goes on while Orbax writes."""
        self.meta.update(step=int(step), wall_s=self._wall(),
                         train_images=int(self.before["train_images"] + self.images),
                         train_time_s=float(self.before["train_time_s"] + self.train_time))
        self.ckpt.save(step, self.state, dict(self.meta))

    def _wall(self) -> float:
        """Wall seconds of the whole run so far, compile and evaluation included, across resumes."""
        return float(self.before["wall_s"]) + time.perf_counter() - self.wall_start

    def _stop_non_finite(self, step: int, loss: float) -> None:
        self.ckpt.wait()
        good = self.ckpt.latest_step()
        where = f"step {good} in {self.workdir / 'checkpoints'}" if good is not None else "none (no checkpoint yet)"
        what = f"loss is {loss}" if not math.isfinite(loss) else "the update made parameters non-finite"
        message = (f"{what} at step {step}: training stopped. The last good checkpoint is {where}; "
                   f"the bad state was not saved. Try a lower learning rate (peak {self.config.learning_rate}).")
        self.stream.emit("run", step=step, phase="end", error=message)
        raise NonFiniteLossError(message)

    def _finish(self, reason: str) -> dict:
        cfg, topo = self.config, self.topo
        self.ckpt.wait()
        images = self.before["train_images"] + self.images
        clock = self.before["train_time_s"] + self.train_time
        ips = images / clock if clock > 0 else float("nan")
        flops = step_flops(self._lowered_step()) if self.images else None
        peak = peak_flops_per_device(topo.mesh.devices.flat[0])
        simulated = topo.simulated
        summary = {
            "stopped": reason, "steps": int(self.meta["step"]), "epochs": self.meta["step"] / self.steps_per_epoch,
            "top1": self.last_eval.get("top1"), "top5": self.last_eval.get("top5"),
            "best_top1": self.meta["best_top1"], "target_accuracy": cfg.target_accuracy or None,
            "time_to_accuracy_s": self.meta["time_to_accuracy_s"], "wall_time_s": self._wall(),
            "train_time_s": clock, "images_per_s": ips, "images_per_s_per_replica": ips / topo.num_replicas,
            "images_per_s_per_device": ips / topo.num_replicas, "devices": topo.label,
            "flops_per_step_per_device": flops,
            "mfu": (flops * ips / cfg.global_batch / peak) if flops and peak and images else None,
            "skipped_records": getattr(self.iterator, "skipped", 0),
            "input_wait_s": (self.iterator.summary()["input_wait_s"] if hasattr(self.iterator, "summary") else 0.0),
            "simulated": simulated, "workdir": str(self.workdir),
        }
        self.stream.emit("run", step=self.meta["step"], phase="end", **summary)
        if jax.process_index() == 0:
            (self.workdir / "summary.json").write_text(json.dumps(summary, indent=1))
        label = " (simulated CPU devices: not a hardware number)" if simulated else ""
        tta = summary["time_to_accuracy_s"]
        self.log(f"train: {reason} after {summary['steps']} steps; top-1 {summary['top1'] or 0:.4f}"
                 + (f"; reached {cfg.target_accuracy:.2%} in {tta:.1f} s wall (compile included)" if tta else "")
                 + f"; {ips:,.0f} images/s steady{label}")
        return summary

    def _lowered_step(self):
        """The plain step, lowered (not compiled again) for XLA's FLOP count."""
        spec = jax.ShapeDtypeStruct
        shape = (self.config.global_batch, self.config.image_size, self.config.image_size, 3)
        img = spec(shape, jax.numpy.bfloat16, sharding=self.topo.batch_sharding)
        lbl = spec(shape[:1], jax.numpy.int32, sharding=self.topo.batch_sharding)
        try:
            return self.steps[False].lower(self.state, img, lbl)
        except Exception:  # noqa: BLE001 - FLOPs are a nicety; never fail a finished run over them
            return None

    def close(self) -> None:
        if hasattr(self.iterator, "close"):
            self.iterator.close()
        self.ckpt.close()


def _progress(total: int, start: int):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
