"""labkit.dashboard: live Panel dashboards of labkit's telemetry (training, BN statistics, input, collectives).

Reads telemetry only, from this process's in-memory stream or a run directory written by another process, and
shows it live. In a notebook::

    import panel as pn; pn.extension()
    from labkit import dashboard, telemetry
    stream = telemetry.open_run("runs/mine")
    dashboard.overview(dashboard.MemorySource(stream))   # updates while a training thread emits
    dashboard.bn_view("runs/other")                     # one view of a run directory, tailed live

From a shell: ``labkit dashboard RUNDIR`` (serve on 127.0.0.1), ``labkit dashboard RUNDIR --save out.html``.
Must not: compute what the library reports, or slow a writer (pages only poll).
"""
from labkit.dashboard.app import VIEWS, overview, save_snapshot
from labkit.dashboard.bn_view import bn_view
from labkit.dashboard.collective_view import collective_view
from labkit.dashboard.controls import run_controls
from labkit.dashboard.feed import Feed
from labkit.dashboard.input_view import input_view
from labkit.dashboard.sources import MemorySource, Reader, RunDirSource
from labkit.dashboard.training_view import training_view

__all__ = ["overview", "save_snapshot", "run_controls", "bn_view", "input_view", "collective_view", "training_view",
           "MemorySource", "RunDirSource", "Reader", "Feed", "VIEWS"]
