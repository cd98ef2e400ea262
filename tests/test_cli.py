"""labkit.cli: `labkit info` and `labkit demo` as a user runs them (fresh processes); every entry point joins a
multi-host job before any JAX backend exists."""
import json
import subprocess
import sys

import pytest

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


# A tiny run: synthetic data, 16x16, resnet_tiny; 4 steps an epoch.
TINY = ["--set", "dataset=synthetic", "--set", "model=resnet_tiny", "--set", "image_size=16", "--set",
        "num_classes=10", "--set", "train_images=256", "--set", "global_batch=64", "--set", "warmup_epochs=0.5",
        "--set", "target_accuracy=0", "--set", "collective_every_steps=0", "--set", "eval_every_epochs=100"]


def test_every_option_has_help_and_the_description_is_a_sentence():
    import argparse
    from labkit import cli

    missing = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append((" ".join(path), action.option_strings or action.dest))
    parser = cli._parser()
    walk(parser, ["labkit"])
    assert missing == []
    description = parser.description
    assert description[0].isupper() and description.endswith(".") and "Owns" not in description
    assert "\n" not in description and "``" not in description
    train = parser._subparsers._group_actions[0].choices["train"]
    assert "labkit config keys" in next(a.help for a in train._actions if a.dest == "set")


def test_config_keys_lists_every_key_with_allowed_values(capsys):
    from labkit import cli
    from labkit.config import ALLOWED, Config
    assert cli.main(["config", "keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = [line.split()[0] for line in lines[1:]]
    assert listed == Config.keys()
    allreduce = next(line for line in lines if line.split()[0] == "allreduce")
    assert all(a in allreduce for a in ALLOWED["allreduce"])


def test_train_failed_start_keeps_nothing_and_bundled_data_dir_is_refused(tmp_path):
    work = tmp_path / "w"
    out = _labkit("train", *TINY, "--set", "dataset=tfrecords", "--set", f"data_dir={tmp_path / 'missing'}",
                  "--workdir", str(work))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"data directory '{tmp_path / 'missing'}' does not exist" in out.stderr
    assert not (work / "config.json").exists() and not list(work.glob("telemetry*.jsonl"))
    bundled = _labkit("train", "--set", f"data_dir={tmp_path}", "--workdir", str(work))
    assert bundled.returncode == 2
    assert f"config.data_dir: '{tmp_path}' is not read by the bundled dataset 'digits'" in bundled.stderr


@pytest.mark.slow
def test_ctrl_c_prints_one_line_keeps_a_checkpoint_and_the_resume_continues_the_history(tmp_path):
    import signal
    import time
    from labkit.dashboard import RunDirSource, training_view
    work = tmp_path / "w"
    cmd = [sys.executable, "-m", "labkit.cli", "train", *TINY, "--set", "epochs=50", "--workdir", str(work)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        events, _ = read_events(work) if (work / "telemetry.jsonl").exists() else ([], 0)
        if sum(e["kind"] == "step" for e in events) >= 5:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    line = next(line for line in err.splitlines() if line.startswith("labkit train: interrupted"))
    kept = int(line.split("checkpoint kept: step ")[1].split()[0])
    assert kept >= 5 and f"in {work / 'checkpoints'}" in line
    assert line.endswith(" ".join(cmd[3:]))  # the same command resumes
    resumed = _labkit(*cmd[3:], "--max-steps", "3")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from the checkpoint at step {kept}" in resumed.stdout
    page = training_view(RunDirSource(work), live=False)
    steps = page.views["training"].steps.data()["step"]
    assert steps[0] == 0 and steps[-1] == kept + 2 and set(range(kept + 3)) <= set(steps)  # the whole history


# ---------------------------------------------------------------------------------------------------------
# Every entry point joins a multi-host job (and sets XLA's GPU flags) before any JAX backend exists:
# jax.distributed.initialize refuses once one does, and XLA reads XLA_FLAGS when the GPU client starts.
# Each probe is a fresh process, task 0 of a 2-node `srun -N2 --ntasks-per-node=1 --gpus-per-node=8` step
# (variables per Slurm's srun(1); SLURM sets CUDA_VISIBLE_DEVICES for the GPUs), on a stand-in GPU box: the
# platform check says "gpu" (this machine runs the CPU backend). jax.distributed.initialize is replaced by a
# recorder that notes whether a backend existed and which XLA_FLAGS were set, then ends the process (the real
# call would wait for the second host).

_PROBE = """
import json, os, sys
import jax
from jax._src import xla_bridge
import labkit.train.overlap as overlap
overlap._platform_before_start = lambda: "gpu"

def initialize(*args, **kwargs):
    print("PROBE " + json.dumps({"backend_existed": xla_bridge.backends_are_initialized(),
                                 "xla_flags": os.environ.get("XLA_FLAGS", ""), "kwargs": kwargs}), flush=True)
    os._exit(0)

jax.distributed.initialize = initialize
exec(sys.argv[1])
print("PROBE none", flush=True)
"""

_SRUN_TASK0 = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[001-002]", "SLURM_STEP_NODELIST": "node[001-002]",
               "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NUM_NODES": "2", "SLURM_PROCID": "0",
               "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
               "SLURM_TASKS_PER_NODE": "1(x2)", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}


def probe_entry_points(codes: dict, tmp_path) -> dict:
    """Run each snippet in a fresh probe process (all at once); name -> what the recorder saw."""
    import os
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "OMPI_", "TPU_WORKER", "LABKIT_COORDINATOR", "LABKIT_NUM_PROCESSES",
                                "LABKIT_PROCESS_ID", "LABKIT_LOCAL_DEVICES", "XLA_FLAGS"))}
    env |= _SRUN_TASK0
    procs = {name: subprocess.Popen([sys.executable, "-c", _PROBE, code], env=env, cwd=tmp_path, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for name, code in codes.items()}
    seen = {}
    for name, proc in procs.items():
        out = proc.communicate(timeout=300)[0]
        line = next((x for x in out.splitlines() if x.startswith("PROBE ")), None)
        assert line is not None, f"{name}: no probe line\n{out[-3000:]}"
        seen[name] = None if line == "PROBE none" else json.loads(line[6:])
    return seen


def _assert_started_first(name, seen):
    assert seen is not None, f"{name} never joined the job"
    assert seen["backend_existed"] is False, f"{name} started a JAX backend before joining the job"
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in seen["xla_flags"], name
    # one process per host: every GPU of the box, not JAX's one-GPU-per-process default for SLURM
    assert seen["kwargs"] == {"num_processes": 2, "local_device_ids": list(range(8))}, name


def test_cli_commands_join_the_job_before_any_backend(tmp_path):
    run = "from labkit.cli import main; main({})"
    seen = probe_entry_points({
        "labkit info": run.format(["info"]),
        "labkit train --config cpu8-digits": run.format(["train", "--config", "cpu8-digits", "--workdir", "w1"]),
        "labkit train --config gpu-resnet50": run.format(["train", "--config", "gpu-resnet50", "--workdir", "w2"]),
        "labkit config keys --config tpu-vm-slice": run.format(["config", "keys", "--config", "tpu-vm-slice"]),
        "labkit bench collectives": run.format(["bench", "collectives"]),
    }, tmp_path)
    for name, result in seen.items():
        _assert_started_first(name, result)


def test_notebooks_join_the_job_before_any_backend(tmp_path):
    """Notebooks start through labkit.lab.setup(); `labkit run` starts them as kernels, which are the JAX
    processes (the command itself joins nothing)."""
    seen = probe_entry_points({"lab.setup()": "from labkit import lab; lab.setup()"}, tmp_path)["lab.setup()"]
    _assert_started_first("lab.setup()", seen)  # the GPU latency-hiding flag is set before the backend too
