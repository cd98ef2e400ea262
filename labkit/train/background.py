"""train.background: run ``train_and_evaluate`` on a background thread, for notebooks and live dashboards.

Owns ``BackgroundRun``: start, stop (checkpoint, then stop at the next host point), wait, and the outcome.
The run writes to an in-memory ``EventStream`` that also mirrors to ``workdir/telemetry.jsonl``, so a dashboard
in the same kernel polls memory while the kernel stays free. Must not: render anything or read telemetry.
"""
from __future__ import annotations

import threading
from pathlib import Path

from labkit import storage, telemetry
from labkit.config import Config

__all__ = ["BackgroundRun"]


class BackgroundRun:
    """``run = BackgroundRun(config, "runs/x").start()``; then ``run.stop()``, ``run.wait()``, ``run.summary``.

    ``run.stream`` is the live event stream (give it to ``labkit.dashboard``). A failure in the run is kept in
    ``run.error`` and re-raised by ``wait()``.
    """

    def __init__(self, config: Config, workdir: str | Path, *, force: bool = False, log=None):
        self.config, self.force = config, force
        self.workdir = workdir if storage.is_url(workdir) else Path(workdir)  # Path() collapses gs:// URLs
        self.stream = telemetry.EventStream(self.workdir)
        self.summary: dict | None = None
        self.error: BaseException | None = None
        self._log = log
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "BackgroundRun":
        if self.running:
            raise RuntimeError("BackgroundRun.start: this run is already running")
        self._stop.clear()
        self.summary, self.error = None, None
        self._thread = threading.Thread(target=self._main, name="labkit-train", daemon=True)
        self._thread.start()
        return self

    def _main(self) -> None:
        from labkit.train.loop import train_and_evaluate
        try:
            self.summary = train_and_evaluate(self.config, self.workdir, force=self.force, stream=self.stream,
                                              stop_event=self._stop, log=self._log)
        except BaseException as e:  # noqa: BLE001 - kept for wait() / the notebook to show
            self.error = e
        finally:
            self.stream.flush()

    def stop(self) -> None:
        """Ask the run to checkpoint and stop at its next host point (``start()`` resumes it)."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> dict | None:
        """Block until the run ends; returns its summary or re-raises its error."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.summary

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def status(self) -> str:
        if self.running:
            return "stopping" if self._stop.is_set() else "running"
        if self.error is not None:
            return f"failed: {self.error}"
        return "finished" if self.summary else "not started"
