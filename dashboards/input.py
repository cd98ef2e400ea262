"""Panel app: labkit's dashboard of a run directory, host input queues: depth, consumer wait, input-bound share, images/s, skipped records.

    panel serve dashboards/input.py --args RUNDIR      (RUNDIR defaults to runs/demo; it may not exist yet)

Each browser session tails RUNDIR/telemetry*.jsonl live. Same page as `labkit dashboard RUNDIR --view input`.
"""
import sys

from labkit.dashboard.serve import make_app

run_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/demo"
make_app(run_dir, view="input")().servable(title=f"labkit input: {run_dir}")
