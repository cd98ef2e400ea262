"""Multi-host on JAX's own runtime: 2 processes x 4 CPU devices give the losses of 1 process x 8 devices."""
import json
import os
import socket
import subprocess
import sys

import pytest

from labkit.config import Config
from labkit.telemetry import read_events
from labkit.train.loop import train_and_evaluate

CONFIG = Config(model="resnet_tiny", dataset="synthetic", num_classes=10, image_size=16, train_images=640,
                global_batch=64, epochs=1, warmup_epochs=0.2, target_accuracy=0.0, bn_stats_every_steps=4,
                collective_every_steps=0, shape="2x4", bn_group=4, allreduce="torus2d")

_WORKER = """
import json, sys
from labkit.config import Config
from labkit.train.loop import train_and_evaluate
cfg = Config.from_dict(json.loads(sys.argv[1]))
train_and_evaluate(cfg, sys.argv[2], log=None)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run_dir, name="telemetry.jsonl"):
    events, _ = read_events(run_dir / name)
    return [e["loss"] for e in events if e["kind"] == "step"]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    single = train_and_evaluate(CONFIG, tmp_path / "one", log=None)
    assert single["steps"] == 10
    port = _free_port()
    config = json.dumps(CONFIG.replace(cpu_devices=4).to_dict())
    procs = []
    for pid in range(2):
        env = dict(os.environ, LABKIT_COORDINATOR=f"127.0.0.1:{port}", LABKIT_NUM_PROCESSES="2",
                   LABKIT_PROCESS_ID=str(pid))
        procs.append(subprocess.Popen([sys.executable, "-c", _WORKER, config, str(tmp_path / "two")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outputs)
    one, two_host0, two_host1 = (_losses(tmp_path / "one"), _losses(tmp_path / "two"),
                                 _losses(tmp_path / "two", "telemetry.host1.jsonl"))
    assert len(one) == len(two_host0) == len(two_host1) == 10
    assert two_host0 == pytest.approx(one, rel=2e-5) and two_host1 == pytest.approx(two_host0, rel=1e-6)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["steps"] == 10 and summary["images_per_s_per_device"] == pytest.approx(
        summary["images_per_s"] / 8)
