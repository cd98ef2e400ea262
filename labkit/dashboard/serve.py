"""dashboard.serve: the ``labkit dashboard RUNDIR`` subcommand (serve on localhost, or ``--save`` static HTML).

Owns the command line of the dashboard: serving the overview (or one view) of a run directory with Panel's
server, each browser session tailing the run's telemetry on its own, and writing a self-contained snapshot.
Must not: hold dashboard logic (that is ``labkit.dashboard.app`` and the views).
"""
from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

__all__ = ["HELP", "add_arguments", "run", "make_app", "page_title"]

HELP = "serve the live dashboard of a run directory on localhost, or --save a static HTML snapshot"

_APPS = ("overview", "training", "bn", "input", "collectives")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUNDIR", help="run directory holding telemetry*.jsonl (may not exist yet)")
    p.add_argument("--port", type=int, default=5006, help="port to serve on (default 5006; 0 picks a free one)")
    p.add_argument("--address", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--save", metavar="OUT.html", default=None,
                   help="write a self-contained static snapshot of the events so far and exit")
    p.add_argument("--view", choices=_APPS, default="overview", help="which page to serve (default overview)")
    p.add_argument("--period-ms", type=int, default=500, help="how often each page polls the run (default 500)")
    p.add_argument("--show", action="store_true", help="open a browser tab")


def make_app(run_dir, *, view: str = "overview", period_ms: int = 500):
    """A Panel app factory: every session gets its own reader of ``run_dir`` (a ``RunDirSource``)."""
    from labkit import dashboard
    if view not in _APPS:
        raise ValueError(f"view: {view!r} is not a dashboard page; allowed: {list(_APPS)}")
    source = dashboard.RunDirSource(run_dir)
    single = {"training": dashboard.training_view, "bn": dashboard.bn_view, "input": dashboard.input_view,
              "collectives": dashboard.collective_view}

    def app():
        if view == "overview":
            return dashboard.overview(source, period_ms=period_ms)
        return single[view](source, period_ms=period_ms)
    return app


def page_title(run_dir, view: str = "overview") -> str:
    """The browser tab's title: the page and the run (``pn.serve(..., title=page_title(...))``)."""
    name = Path(run_dir).name or str(run_dir)
    return f"labkit dashboard: {name}" if view == "overview" else f"labkit {view}: {name}"


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _check_port(address: str, port: int) -> int:
    """The port to serve on: ``port`` if it is valid and free, a free one for 0; else a one-line ValueError."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port: {port} is not a TCP port; allowed: 1-65535, or 0 for a free one")
    try:
        with socket.socket() as s:
            s.bind((address, port))
            return s.getsockname()[1]
    except OSError as e:
        why = "is already in use" if e.errno in (98, 48, 10048) else f"cannot be opened ({e.strerror})"
        raise ValueError(f"--port: {address}:{port} {why}; allowed: a free port, or --port 0 to pick one "
                         "(another labkit dashboard may be running)") from None


def run(args) -> int:
    from labkit import storage
    run_dir = args.run_dir if storage.is_url(args.run_dir) else Path(args.run_dir)  # gs:// URLs stay strings
    if args.save:
        from labkit import telemetry
        from labkit.dashboard import RunDirSource, save_snapshot
        if not storage.isdir(run_dir) or not telemetry.telemetry_files(run_dir):
            what = "does not exist" if not storage.exists(run_dir) else (
                "is not a directory" if not storage.isdir(run_dir) else "holds no telemetry*.jsonl")
            raise ValueError(f"--save: run directory {str(run_dir)!r} {what}, so there is nothing to save; "
                             "allowed: a run directory holding telemetry.jsonl (serve a run that has not "
                             "started yet without --save: the page waits for it)")
        path = save_snapshot(RunDirSource(run_dir), args.save, title=f"labkit dashboard: {run_dir}")
        print(f"labkit dashboard: wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, self-contained)")
        return 0
    if not storage.isdir(run_dir):
        print(f"labkit dashboard: {run_dir} is not a directory (yet); the page says so and waits for "
              f"{storage.join(run_dir, 'telemetry.jsonl')}", file=sys.stderr)
    if args.period_ms < 50:
        raise ValueError(f"--period-ms: {args.period_ms} is too fast to be useful; allowed: >= 50")
    import panel as pn
    port = _check_port(args.address, args.port)
    print(f"labkit dashboard: serving {run_dir} at http://{args.address}:{port}/ (Ctrl-C stops)", flush=True)
    pn.serve({"/": make_app(run_dir, view=args.view, period_ms=args.period_ms)}, port=port, address=args.address,
             websocket_origin=[f"{args.address}:{port}", f"localhost:{port}"], show=args.show,
             title=page_title(run_dir, args.view), verbose=False)
    return 0
