"""labkit.cli: `labkit info` and `labkit demo` as a user runs them (fresh processes)."""
import json
import subprocess
import sys

from labkit.telemetry import read_events


def _labkit(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "labkit.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_info_draws_topology():
    out = _labkit("info", "--shape", "4x2", "--bn-group", "4")
    assert out.returncode == 0, out.stderr
    assert "8 devices" in out.stdout and "process 0 of 1" in out.stdout
    assert "8 replicas on a 4x2 torus" in out.stdout
    assert "groups: A=[0, 1, 2, 3]  B=[4, 5, 6, 7]" in out.stdout


def test_info_rejects_bad_bn_group_with_allowed_values():
    out = _labkit("info", "--bn-group", "3")
    assert out.returncode == 2
    assert "bn_group: 3 does not tile a 2x4 torus; allowed values: [1, 2, 4, 8]" in out.stderr
    assert "Traceback" not in out.stderr


def test_demo_writes_telemetry(tmp_path):
    out = _labkit("demo", "--steps", "4", "--workdir", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    assert "simulated CPU devices: not a hardware number" in out.stdout
    events, skipped = read_events(tmp_path / "run")
    assert skipped == 0 and [e["step"] for e in events if e["kind"] == "step"] == [0, 1, 2, 3]


def test_train_on_a_tiny_config_and_bad_override(tmp_path):
    work = tmp_path / "t"
    out = _labkit("train", "--set", "dataset=synthetic", "--set", "model=resnet_tiny", "--set", "image_size=16",
                  "--set", "num_classes=10", "--set", "train_images=256", "--set", "global_batch=64",
                  "--set", "epochs=1", "--set", "warmup_epochs=0.5", "--set", "target_accuracy=0",
                  "--set", "collective_every_steps=0", "--max-steps", "3", "--workdir", str(work))
    assert out.returncode == 0, out.stderr
    assert "summary:" in out.stdout and "simulated CPU devices" in out.stdout
    summary = json.loads((work / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["stopped"] == "max_steps"
    bad = _labkit("train", "--set", "bn_group=3", "--workdir", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "bn_group: 3" in bad.stderr and "allowed values: [1, 2, 4, 8]" in bad.stderr
