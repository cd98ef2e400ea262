"""Panel app: labkit's dashboard of a run directory, collective timing: time and busbw vs payload, cost models, per-step all-reduce.

    panel serve dashboards/collectives.py --args RUNDIR      (RUNDIR defaults to runs/demo; it may not exist yet)

Each browser session tails RUNDIR/telemetry*.jsonl live. Same page as `labkit dashboard RUNDIR --view collectives`.
"""
import sys

from labkit.dashboard.serve import make_app

run_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/demo"
make_app(run_dir, view="collectives")().servable(title=f"labkit collectives: {run_dir}")
