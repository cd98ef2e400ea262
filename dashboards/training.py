"""Panel app: labkit's dashboard of a run directory, training: loss, learning rate, accuracy, images/s, time-to-accuracy.

    panel serve dashboards/training.py --args RUNDIR      (RUNDIR defaults to runs/demo; it may not exist yet)

Each browser session tails RUNDIR/telemetry*.jsonl live. Same page as `labkit dashboard RUNDIR --view training`.
"""
import sys

from labkit.dashboard.serve import make_app

run_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/demo"
make_app(run_dir, view="training")().servable(title=f"labkit training: {run_dir}")
