"""dashboard.controls: start/stop buttons and a status line for a training run on a background thread.

Owns ``run_controls(run)``: widgets for a ``labkit.train.background.BackgroundRun`` (or anything with
``start()``, ``stop()`` and ``status``), to pass as ``overview(..., controls=...)`` in a notebook.
Must not: reach into training: it only calls the run's public start/stop.
"""
from __future__ import annotations

import panel as pn

__all__ = ["run_controls"]


def run_controls(run, period_ms: int = 500) -> pn.Row:
    """Start (or resume from the last checkpoint) and stop (checkpoint, then stop) buttons with the run's status."""
    start = pn.widgets.Button(label="start / resume", button_type="success", width=130)
    stop = pn.widgets.Button(label="stop", button_type="danger", width=80)
    status = pn.pane.Markdown(f"run: **{run.status}**", margin=(0, 10))

    def refresh(*_):
        status.object = f"run: **{run.status}**"
        start.disabled, stop.disabled = run.running, not run.running

    def on_start(_):
        if not run.running:
            run.start()
        refresh()

    def on_stop(_):
        run.stop()
        refresh()

    start.on_click(on_start)
    stop.on_click(on_stop)
    refresh()
    row = pn.Row(start, stop, status)
    row.callback = pn.state.add_periodic_callback(refresh, period=period_ms)  # keep the status fresh
    return row
