"""A killed run resumes from its last checkpoint and, on CPU, continues with the losses of an unbroken run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from labkit.config import Config
from labkit.telemetry import JsonlFollower, read_events
from labkit.train.loop import train_and_evaluate

# Real digits through the deterministic tf.data pipeline: 1497 // 64 = 23 steps per epoch.
CONFIG = Config(model="resnet_tiny", dataset="digits", image_size=16, global_batch=64, epochs=1,
                warmup_epochs=0.2, target_accuracy=0.0, checkpoint_every_steps=5, bn_stats_every_steps=0,
                collective_every_steps=0, crop_area_min=0.5, shape="2x4", bn_group=2, allreduce="torus2d",
                deterministic=True)

_WORKER = """
import json, sys
from labkit.config import Config
from labkit.train.loop import train_and_evaluate
train_and_evaluate(Config.from_dict(json.loads(sys.argv[1])), sys.argv[2], log=None)
"""


def _step_losses(run_dir):
    events, _ = read_events(run_dir)
    return {e["step"]: e["loss"] for e in events if e["kind"] == "step"}


@pytest.mark.slow
def test_killed_run_resumes_with_the_same_losses(tmp_path):
    reference = _step_losses_of(train_and_evaluate(CONFIG, tmp_path / "unbroken", log=None), tmp_path / "unbroken")
    assert len(reference) == 23

    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, json.dumps(CONFIG.to_dict()), str(run_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    follower, seen, deadline = JsonlFollower(run_dir / "telemetry.jsonl"), -1, time.monotonic() + 300
    finalized = run_dir / "checkpoints" / "5"  # Orbax renames its temporary directory when a save is complete
    while not (seen >= 7 and finalized.is_dir()) and time.monotonic() < deadline and proc.poll() is None:
        seen = max([seen] + [e["step"] for e in follower.poll() if e["kind"] == "step"])
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert 7 <= seen < 22 and finalized.is_dir(), f"the worker was not killed mid-run (last step seen: {seen})"
    killed_at = seen

    summary = train_and_evaluate(CONFIG, run_dir, log=None)
    assert summary["steps"] == 23 and summary["stopped"] == "epochs"
    events, _ = read_events(run_dir)
    starts = [i for i, e in enumerate(events) if e["kind"] == "run" and e.get("phase") == "start"]
    assert len(starts) == 2  # the killed process and the resumed one, appended to the same file
    resumed_from = events[starts[-1]]["resumed_from"]
    assert resumed_from in (5, 10) and resumed_from <= killed_at  # the last checkpoint before the kill
    resumed = {e["step"]: e["loss"] for e in events[starts[-1]:] if e["kind"] == "step"}
    assert sorted(resumed) == list(range(resumed_from, 23))
    for step, loss in resumed.items():
        assert loss == pytest.approx(reference[step], rel=1e-6, abs=1e-7), step


def _step_losses_of(summary, run_dir):
    assert summary["steps"] == 23
    return _step_losses(run_dir)
