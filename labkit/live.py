"""live: a training run shown live in whichever notebook front end runs the kernel, a static figure at the end.

Owns ``show(run)``, ``front_end()`` and ``Live.follow``. One run, one telemetry stream, two views:

- ``"panel"`` (JupyterLab, Jupyter Notebook, VS Code): labkit's Panel overview dashboard with the run's
  start/stop controls, redrawn by Panel's periodic callbacks, which run on the kernel's event loop;
- ``"figure"`` (Colab, or wherever Panel is not installed): the run's curves as a matplotlib figure in an
  IPython display handle, redrawn by ``follow``, with ipywidgets start/stop buttons. Display handles and
  ipywidgets work in every front end; Panel's own notes for Colab need ``jupyter_bokeh`` (which needs the
  ipywidgets 8 that Colab's front end does not ship) and list update problems there.

``follow`` is a coroutine: ``summary = await live.follow()`` waits for the run while the kernel's event loop
keeps running, so either view stays live under "Run all" (a blocking ``run.wait()`` in the next cell holds the
main thread, and Panel's callbacks never run: measured in JupyterLab, real-stacks.md §5). When the run ends,
the view is replaced by the static figure that a saved notebook stores (GitHub, nbviewer, Colab's preview).
``LABKIT_LIVE=panel|figure`` chooses the view by hand.
While a cell awaits ``follow``, the kernel handles no other request, and a button press is one (a comm message
on the shell channel, which ipykernel serves one at a time): the buttons act once the cell stops waiting.
Interrupting the kernel stops the waiting, not the run; then "stop" (or ``run.stop()``) checkpoints and stops it.
Must not: steer training beyond the run's public ``start``/``stop``, or compute what the library reports.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import time

__all__ = ["FRONT_ENDS", "front_end", "show", "Live"]

FRONT_ENDS = ("panel", "figure")


def front_end() -> str:
    """``"figure"`` in Colab or without Panel, else ``"panel"``; ``LABKIT_LIVE`` overrides (panel | figure)."""
    forced = os.environ.get("LABKIT_LIVE", "").strip().lower()
    if forced:
        if forced not in FRONT_ENDS:
            raise ValueError(f"LABKIT_LIVE: {forced!r} is not a live view; allowed: {list(FRONT_ENDS)}")
        return forced
    if _in_colab() or importlib.util.find_spec("panel") is None:
        return "figure"
    return "panel"


def _in_colab() -> bool:
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):  # no `google` namespace package at all
        return False


def show(run, *, label: str = "", mode: str | None = None) -> "Live":
    """Display ``run`` (a ``labkit.train.background.BackgroundRun``) live; returns the ``Live`` to ``follow``."""
    from IPython.display import display
    mode = mode or front_end()
    if mode not in FRONT_ENDS:
        raise ValueError(f"mode: {mode!r} is not a live view; allowed: {list(FRONT_ENDS)}")
    live = Live(run, mode, label)
    if mode == "panel":
        import panel as pn
        from labkit import dashboard
        pn.extension()
        live.handle = display(dashboard.overview(dashboard.MemorySource(run.stream),
                                                 controls=dashboard.run_controls(run)), display_id=True)
    else:
        controls = _widget_controls(run)
        if controls is not None:
            display(controls[0])
            live.refresh_controls = controls[1]
        live.handle = display(live.snapshot(), display_id=True)
    return live


class Live:
    """A displayed live view of a run: ``await follow()`` until it ends (``handle`` is the display handle)."""

    def __init__(self, run, mode: str, label: str = ""):
        self.run, self.mode, self.label = run, mode, label
        self.handle = None
        self.redraws = 0  # figure view: how many times follow() replaced the figure
        self.refresh_controls = lambda: None  # figure view: rewrites the buttons' "run: <status>" line

    def snapshot(self):
        """The run's curves so far, titled with where it stands (the figure view's frame, and the final figure)."""
        from labkit import figures
        events = self.run.stream.events()
        steps = [e for e in events if e.get("kind") == "step"]
        evals = [e for e in events if e.get("kind") == "eval" and e.get("top1") is not None]
        where = f"step {steps[-1]['step']}" if steps else "waiting for the first step"
        if evals:
            where += f" · top-1 {evals[-1]['top1']:.3f}"
        plot = figures.training_curves(events, label=self.label)
        plot.figure.suptitle(f"{where} · run {self.run.status}", fontsize=10)
        return plot

    async def follow(self, *, period_s: float = 0.25, redraw_s: float = 2.0) -> dict | None:
        """Wait for the run without blocking the event loop; redraw the figure view every ``redraw_s`` seconds
        while new steps arrive; then show the final static figure. Returns the run's summary (or raises its error)."""
        last, seen = time.monotonic(), -1
        while self.run.running:
            await asyncio.sleep(period_s)
            if self.mode == "figure" and time.monotonic() - last >= redraw_s:
                n = len(self.run.stream.events("step"))
                if n != seen:
                    self.handle.update(self.snapshot())
                    self.refresh_controls()
                    self.redraws, seen, last = self.redraws + 1, n, time.monotonic()
        try:
            return self.run.wait()  # the run's summary, or its error
        finally:  # a failed run too: the buttons' status says so and the final figure replaces the live one
            self.refresh_controls()
            if self.handle is not None:
                from labkit import figures
                self.handle.update(figures.training_curves(self.run.stream.events(), label=self.label))


def _widget_controls(run):
    """ipywidgets start / stop buttons for the figure view and a function that refreshes their status line
    (None where ipywidgets is missing)."""
    try:
        import ipywidgets as w
    except ImportError:
        return None
    start = w.Button(description="start / resume", button_style="success")
    stop = w.Button(description="stop", button_style="danger")
    status = w.HTML(f"run: <b>{run.status}</b>")

    def refresh():
        status.value = f"run: <b>{run.status}</b>"

    def on_start(_):
        if not run.running:
            run.start()
        refresh()

    def on_stop(_):
        run.stop()
        refresh()

    start.on_click(on_start)
    stop.on_click(on_stop)
    return w.HBox([start, stop, status]), refresh
