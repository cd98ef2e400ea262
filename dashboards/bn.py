"""Panel app: labkit's dashboard of a run directory, per-replica batch statistics and the BN groups on the torus.

    panel serve dashboards/bn.py --args RUNDIR      (RUNDIR defaults to runs/demo; it may not exist yet)

Each browser session tails RUNDIR/telemetry*.jsonl live. Same page as `labkit dashboard RUNDIR --view bn`.
"""
import sys

from labkit.dashboard.serve import make_app

run_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/demo"
make_app(run_dir, view="bn")().servable(title=f"labkit bn: {run_dir}")
