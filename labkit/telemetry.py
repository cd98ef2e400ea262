"""telemetry: the one event stream that every part of labkit writes and every dashboard reads.

Owns event records, their sinks (a thread-safe in-memory ring buffer and an append-only JSONL file per host),
and readers that follow a file live while another process writes it. Emitting never blocks on I/O: JSON encoding
and writing happen on a background thread. Files go through ``labkit.storage``, so a run directory may be a
``gs://`` URL: there what was emitted is uploaded every ``storage.APPEND_INTERVAL_S`` seconds and on
``flush``/``close`` (only the new bytes, composed onto the object: upload linear in run length). Must not: compute statistics, or reach into training internals.

Event record: ``{"kind": str, "time": unix seconds, "step": int | None, "host": process index, "seq": n, ...}``.
"""
from __future__ import annotations

import collections
import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from labkit import storage

__all__ = ["KINDS", "register_kind", "EventStream", "emit", "current", "use", "open_run",
           "JsonlFollower", "read_events", "telemetry_files"]

# The documented kinds and their fields (beyond kind/time/step/host/seq). Writers may add fields; readers must
# tolerate missing ones.
KINDS: dict[str, str] = {
    "run": "a run starts or ends. phase='start': config fields, replicas, torus [X, Y], bn_group, backend, "
           "simulated (bool), devices (label), steps_per_loop. phase='end': the summary (summary.json): top1, images_per_s "
           "(steady-state: images over the device-synchronised windows between host reads that did not compile, "
           "evaluations and checkpoint writes left out), images_per_s_wall (all images / all wall time), "
           "wall_time_s and time_to_accuracy_s (wall seconds from the run's FIRST start, resumes included; None "
           "until reached), train_time_s, compile_time_s, flops_per_step_per_device, peak_flops_per_device, mfu "
           "(None with mfu_reason when the peak or FLOPs are unknown); or error",
    "step": "a host read of the training window (at log_every_steps and at every other host point: BN export, "
            "collective timing, evaluation, checkpoint, end); step = the window's last step: loss, accuracy (of "
            "that step), lr, steps (in the window), images_per_s (steady rate over the window since the previous "
            "step event; None when the window compiled), step_time_s (window seconds / steps), window_s, "
            "input_wait_s (summed over the window), compile (bool), wall_s (seconds since the run's first start)",
    "eval": "an evaluation: top1, top5, count (images evaluated), eval_time_s, wall_s (seconds since the run's "
            "first start), time_to_accuracy_s (None until the target is reached)",
    "bn_stats": "one BN layer's per-replica statistics: layer (path), groups (replica ids per BN group), and "
                "one list per labkit.bn.BN_STAT_FIELDS entry with a value per replica",
    "input_queue": "one host's prefetch-to-device queue at a consumer step: depth, capacity, wait_s (consumer "
                   "wait this step), images_per_s_in (producer), images_per_s_out (consumer), skipped "
                   "(cumulative bad records), input_bound (bool)",
    "collective": "one all-reduce timing: algorithm, bytes (payload per replica), time_s, algbw, busbw "
                  "(bytes/s, nccl-tests definitions), replicas, source ('bench' | 'train')",
    "cost_model": "a fitted collective cost model: algorithm, alpha_s, beta_s_per_byte, and the predicted curve "
                  "as lists bytes / time_s (dashboards plot it; they do not evaluate the model)",
    "step_breakdown": "where a step's time goes, from a jax.profiler trace of a few steps (labkit.profile): "
                      "step_s, seconds and fractions (dicts over compute, bn_collectives, gradient_allreduce, "
                      "other_collectives, unattributed (device time the trace does not tie to an op of the step), "
                      "input_wait, host), overlap_s, unattributed_events, collective_ops (ops per category), steps, "
                      "devices, model, global_batch, bn_group, allreduce, replicas, simulated (bool)",
}


def register_kind(kind: str, doc: str) -> None:
    """Add an event kind (for extensions); emitting an unregistered kind is an error, to catch typos."""
    if not kind.isidentifier():
        raise ValueError(f"register_kind: kind must be an identifier, got {kind!r}")
    KINDS[kind] = doc


def telemetry_files(run_dir: str | os.PathLike) -> list[Path | str]:
    """The JSONL files of a run directory, one per host (host 0 writes ``telemetry.jsonl``): ``Path``s for a
    local directory, URL strings for a ``gs://`` one."""
    files = storage.glob(storage.join(run_dir, "telemetry*.jsonl"))
    return files if storage.is_url(run_dir) else [Path(f) for f in files]


def _file_name(host: int) -> str:
    return "telemetry.jsonl" if host == 0 else f"telemetry.host{host}.jsonl"


def _to_json(value: Any):
    """Encoder fallback for numpy / jax values; runs on the writer thread, never in the training loop."""
    import numpy as np
    if hasattr(value, "__array__"):
        arr = np.asarray(value)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"telemetry: cannot encode {type(value).__name__} as JSON")


class EventStream:
    """Events into a ring buffer (always) and, given ``run_dir``, into ``run_dir/telemetry[.hostN].jsonl``.

    ``since(cursor)`` returns the events after a cursor, so any number of readers (dashboards) can poll
    without coordination. ``capacity`` bounds memory; readers that fall behind skip ahead (counted in
    ``since``'s returned ``missed``).
    """

    def __init__(self, run_dir: str | os.PathLike | None = None, *, capacity: int = 65536,
                 host: int | None = None):
        self._host = host
        self._lock = threading.Lock()
        self._ring: collections.deque[dict] = collections.deque(maxlen=capacity)
        self._seq = 0
        self.run_dir = None if run_dir is None else run_dir if storage.is_url(run_dir) else Path(run_dir)
        self.path: Path | str | None = None
        self._sink = None
        self._queue: queue.Queue | None = None
        self._writer: threading.Thread | None = None
        self.write_errors = 0

    @property
    def host(self) -> int:
        if self._host is None:
            import jax  # the backend is up by the time anything emits
            self._host = jax.process_index()
        return self._host

    def emit(self, kind: str, step: int | None = None, **fields) -> dict:
        """Record one event; returns it. Values may be Python, numpy or jax scalars/arrays."""
        if kind not in KINDS:
            raise ValueError(f"telemetry.emit: unknown kind {kind!r}; allowed: {sorted(KINDS)} "
                             "(labkit.telemetry.register_kind adds one)")
        event = {"kind": kind, "time": time.time(), "step": None if step is None else int(step),
                 "host": self.host}
        event.update(fields)
        with self._lock:
            self._seq += 1
            event["seq"] = self._seq
            self._ring.append(event)
        if self.run_dir is not None:
            if self._writer is None:
                self._start_writer()
            self._queue.put(event)
        return event

    def since(self, cursor: int = 0) -> tuple[list[dict], int, int]:
        """Events with ``seq > cursor``: returns ``(events, new_cursor, missed)``; missed = rolled out of the ring."""
        with self._lock:
            if cursor >= self._seq:
                return [], self._seq, 0
            first = self._ring[0]["seq"]
            start = max(cursor + 1, first)
            events = [self._ring[i - first] for i in range(start, self._seq + 1)]
            return events, self._seq, start - (cursor + 1)

    def events(self, kind: str | None = None) -> list[dict]:
        """A snapshot of the ring buffer, optionally of one kind."""
        with self._lock:
            return [e for e in self._ring if kind is None or e["kind"] == kind]

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every emitted event is on disk (no-op without a run directory)."""
        if self._queue is None:
            return
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        if self._sink is not None and hasattr(self._sink, "pending"):  # an object store: upload now
            self._sink.flush(force=True)

    def close(self) -> None:
        self.flush()
        if self._queue is not None:
            self._queue.put(None)
            self._writer.join(timeout=5)
            self._queue, self._writer = None, None

    def _start_writer(self) -> None:
        storage.makedirs(self.run_dir)
        self.path = storage.join(self.run_dir, _file_name(self.host))
        if not storage.is_url(self.path):
            self.path = Path(self.path)
        self._queue = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, args=(self.path, self._queue),
                                        name="labkit-telemetry-writer", daemon=True)
        self._writer.start()

    def _write_loop(self, path, q: queue.Queue) -> None:
        with storage.open_append(path) as f:
            self._sink = f
            if f.tell() > 0:  # a killed writer may have left a torn line: close it off
                if storage.read_range(path, f.tell() - 1)[1] != b"\n":
                    f.write(b"\n")
            while True:
                try:  # an object store uploads on a timer: wake up to upload what is buffered
                    item = q.get(timeout=storage.APPEND_INTERVAL_S if hasattr(f, "pending") else None)
                except queue.Empty:
                    f.flush()
                    continue
                batch = [item]
                while item is not None and not q.empty():  # drain what is waiting: one write, one flush
                    item = q.get()
                    batch.append(item)
                lines = []
                for event in batch:
                    if event is None:
                        continue
                    try:
                        lines.append(json.dumps(event, default=_to_json, allow_nan=True))
                    except (TypeError, ValueError):
                        self.write_errors += 1
                if lines:
                    f.write(("\n".join(lines) + "\n").encode())
                    f.flush()
                for _ in batch:
                    q.task_done()
                if batch[-1] is None:
                    return


class JsonlFollower:
    """Follow a telemetry JSONL file written by another process; ``poll()`` returns the new complete events.

    A missing file yields nothing (the run may not have started). An incomplete last line is kept until its
    newline arrives; a complete line that is not a JSON event is skipped and counted in ``skipped``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = path if storage.is_url(path) else Path(path)
        self.skipped = 0
        self._offset = 0
        self._partial = b""

    def poll(self, max_bytes: int | None = 64 << 20) -> list[dict]:
        """New complete events since the last poll (reads at most ``max_bytes``; None = to the end)."""
        try:
            size, data = storage.read_range(self.path, self._offset, max_bytes)
            if size < self._offset:  # truncated or replaced: start over
                self._offset, self._partial = 0, b""
                size, data = storage.read_range(self.path, 0, max_bytes)
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        return list(self._parse(lines))

    def _parse(self, lines: Iterable[bytes]):
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                self.skipped += 1
                continue
            if isinstance(event, dict) and isinstance(event.get("kind"), str):
                yield event
            else:
                self.skipped += 1


def read_events(path: str | os.PathLike) -> tuple[list[dict], int]:
    """Every complete event of a JSONL file (or of all hosts' files in a run directory), and the skipped count."""
    files = telemetry_files(path) if storage.isdir(path) else [path]
    events, skipped = [], 0
    for file in files:
        follower = JsonlFollower(file)
        events.extend(follower.poll(max_bytes=None))
        skipped += follower.skipped + (1 if follower._partial.strip() else 0)  # a torn last line counts
    if len(files) > 1:  # merge hosts by time; the sort is stable, so each file keeps its own order
        events.sort(key=lambda e: e.get("time", 0.0))
    return events, skipped


_current = EventStream()


def current() -> EventStream:
    """The process-wide stream that ``emit`` writes to (memory-only until ``open_run``)."""
    return _current


def use(stream: EventStream) -> EventStream:
    """Make ``stream`` the process-wide stream; returns the previous one."""
    global _current
    previous, _current = _current, stream
    return previous


def open_run(run_dir: str | os.PathLike, **kwargs) -> EventStream:
    """Start a new process-wide stream that also writes JSONL into ``run_dir``."""
    stream = EventStream(run_dir, **kwargs)
    use(stream)
    return stream


def emit(kind: str, step: int | None = None, **fields) -> dict:
    """Emit on the process-wide stream. See ``KINDS`` for the documented kinds and their fields."""
    return _current.emit(kind, step, **fields)
