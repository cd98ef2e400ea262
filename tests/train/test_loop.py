"""labkit.train.loop: a whole run's outputs, the NaN guard, stopping, the config guard, and resume."""
import json
import threading

import numpy as np
import orbax.checkpoint as ocp
import pytest

from labkit.config import Config, ConfigError
from labkit.telemetry import EventStream, read_events
from labkit.train.loop import NonFiniteLossError, train_and_evaluate

# A tiny synthetic run: 10 steps per epoch of 64 images, no evaluation data.
TINY = Config(model="resnet_tiny", dataset="synthetic", num_classes=10, image_size=16, train_images=640,
              global_batch=64, epochs=2, warmup_epochs=0.5, target_accuracy=0.0, bn_stats_every_steps=5,
              collective_every_steps=5, shape="2x4", bn_group=2, allreduce="torus2d")


def test_run_writes_summary_checkpoints_and_telemetry(tmp_path, monkeypatch, capsys):
    summary = train_and_evaluate(TINY, tmp_path, log=None)
    assert summary["stopped"] == "epochs" and summary["steps"] == 20
    assert json.loads((tmp_path / "summary.json").read_text()) == pytest.approx(summary, nan_ok=True)
    assert summary["images_per_s"] > 0 and summary["simulated"] is True and summary["mfu"] is None
    assert summary["flops_per_step_per_device"] > 0
    assert summary["train_time_s"] < summary["wall_time_s"]  # compile and checkpoints are not training time
    events, skipped = read_events(tmp_path)
    assert skipped == 0
    kinds = {e["kind"] for e in events}
    assert {"run", "step", "bn_stats", "collective"} <= kinds
    steps = [e for e in events if e["kind"] == "step"]
    assert [e["step"] for e in steps] == list(range(20))
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert steps[10]["lr"] == pytest.approx(TINY.learning_rate * (1 - 5 / 15) ** 2, rel=1e-4)
    coll = [e for e in events if e["kind"] == "collective"]
    assert [e["step"] for e in coll] == [0, 5, 10, 15] and all(e["source"] == "train" for e in coll)
    start = next(e for e in events if e["kind"] == "run" and e["phase"] == "start")
    assert start["torus"] == [2, 4] and start["bn_group"] == 2 and start["config"]["allreduce"] == "torus2d"
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [10, 20]
    _rerun_of_a_finished_run_touches_nothing(tmp_path, summary, monkeypatch, capsys)


def _rerun_of_a_finished_run_touches_nothing(workdir, summary, monkeypatch, capsys):
    """``labkit train`` again on a finished run: it says so and returns at once (no model built, nothing compiled)
    and leaves summary.json, telemetry and checkpoints as they were."""
    from labkit import cli
    from labkit.train import loop
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in workdir.rglob("*")
             if p.is_file() and p.name != "config.json"}

    def no_run(*args, **kwargs):
        raise AssertionError("a finished run built its model and steps again")
    monkeypatch.setattr(loop, "_Run", no_run)
    monkeypatch.setattr("labkit.presets.get_preset", lambda name: TINY)  # `--config` gives exactly TINY
    capsys.readouterr()
    assert cli.main(["train", "--config", "tiny", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert f"the run in {workdir} already finished (epochs after 20 steps; no evaluation data)" in out
    assert "summary.json left untouched" in out
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in workdir.rglob("*")
            if p.is_file() and p.name != "config.json"} == files
    again = train_and_evaluate(TINY, workdir, log=None)
    assert again == pytest.approx(summary, nan_ok=True)  # the stored summary, not a new one
    # More epochs (a forced resume with a different config) is not finished: it would train on.
    assert loop._finished_summary(workdir, TINY.replace(epochs=3)) is None
    assert loop._finished_summary(workdir, TINY)["steps"] == 20


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    bad = TINY.replace(peak_lr=1e9, warmup_epochs=0.0, checkpoint_every_steps=1, collective_every_steps=0)
    with pytest.raises(NonFiniteLossError, match=r"loss, parameters or BN statistics became NaN/inf at step \d+ "
                                                 r"\(loss .*\): training stopped\. The last good checkpoint is "
                                                 r"step \d+"):
        train_and_evaluate(bad, tmp_path, log=None)
    events, _ = read_events(tmp_path)
    end = [e for e in events if e["kind"] == "run" and e.get("phase") == "end"]
    assert len(end) == 1 and "training stopped" in end[0]["error"]
    bad_step = end[0]["step"]
    manager = ocp.CheckpointManager(tmp_path.absolute() / "checkpoints")
    latest = manager.latest_step()
    assert latest == bad_step  # steps 0..bad_step-1 were good; the bad one was not saved
    restored = manager.restore(latest, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    leaves = [np.asarray(x) for x in _leaves(restored.state["params"])]
    assert leaves and all(np.isfinite(x).all() for x in leaves)


def _leaves(tree):
    import jax
    return jax.tree_util.tree_leaves(tree)


def test_stop_event_checkpoints_and_stops(tmp_path):
    stop = threading.Event()
    stream = EventStream(tmp_path, host=0)
    original = stream.emit

    def emit(kind, step=None, **fields):  # stop once step 3 has been reported
        event = original(kind, step, **fields)
        if kind == "step" and step == 3:
            stop.set()
        return event

    stream.emit = emit
    summary = train_and_evaluate(TINY, tmp_path, stream=stream, stop_event=stop, log=None)
    stream.close()
    assert summary["stopped"] == "stopped" and summary["steps"] == 4
    assert max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == 4


def test_resume_with_a_different_config_is_refused(tmp_path):
    train_and_evaluate(TINY, tmp_path, max_steps=2, log=None)
    with pytest.raises(ConfigError, match=r"different config \(bn_group: 2 -> 4\)"):
        train_and_evaluate(TINY.replace(bn_group=4), tmp_path, log=None)


def test_bad_topology_values_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.global_batch: 60 is not divisible by the 8 replicas"):
        train_and_evaluate(TINY.replace(global_batch=60), tmp_path, log=None)
    with pytest.raises(ValueError, match=r"bn_group: 3 does not tile a 2x4 torus; allowed values: \[1, 2, 4, 8\]"):
        train_and_evaluate(TINY.replace(bn_group=3), tmp_path, log=None)


def test_cpu8_digits_times_a_few_all_reduces_before_its_target():
    """The dashboard's in-training all-reduce panel gets several points: the run stops at its target after
    about 8 epochs, so at least 3 timings must fall in the first 6."""
    from labkit.presets import get_preset
    from labkit.train.input import describe_data
    config = get_preset("cpu8-digits")
    steps_per_epoch = describe_data(config).train_images // config.global_batch
    assert len(range(0, 6 * steps_per_epoch, config.collective_every_steps)) >= 3
