"""Panel app: labkit's dashboard of a run directory, the overview: training, per-replica BN statistics, host input queues, collective timing.

    panel serve dashboards/overview.py --args RUNDIR      (RUNDIR defaults to runs/demo; it may not exist yet)

Each browser session tails RUNDIR/telemetry*.jsonl live. Same page as `labkit dashboard RUNDIR --view overview`.
"""
import sys

from labkit.dashboard.serve import make_app

run_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/demo"
make_app(run_dir, view="overview")().servable(title=f"labkit overview: {run_dir}")
