"""labkit.runs: `labkit run` executes the training notebook with papermill, sweeps, indexes, and fails clearly."""
import csv
import json
import time

import nbformat
import pytest

from labkit import cli
from labkit.runs import DEFAULT_NOTEBOOK, _sweep_points, _typed, config_from_parameters

# A few steps of the real notebook: resnet_tiny on 16x16 digits, 1497 // 64 = 23 steps an epoch.
TINY = ["-p", "model", "resnet_tiny", "-p", "image_size", "16", "-p", "global_batch", "64", "-p", "epochs", "0.3",
        "-p", "warmup_epochs", "0.05", "-p", "target_accuracy", "0", "-p", "collective_every_steps", "0"]


def _index(runs_dir):
    with open(runs_dir / "index.csv") as f:
        return list(csv.DictReader(f))


def test_parameter_parsing_and_sweep_points():
    assert [_typed(v) for v in ("8", "0.5", "true", "None", "torus2d")] == [8, 0.5, True, None, "torus2d"]
    assert _sweep_points(["bn_group=1,2", "allreduce=ring,xla"]) == [
        {"bn_group": 1, "allreduce": "ring"}, {"bn_group": 1, "allreduce": "xla"},
        {"bn_group": 2, "allreduce": "ring"}, {"bn_group": 2, "allreduce": "xla"}]
    with pytest.raises(ValueError, match="--sweep: expected KEY=V1,V2"):
        _sweep_points(["bn_group"])


def test_config_from_notebook_globals():
    cfg = config_from_parameters("cpu8-digits", {"bn_group": 4, "allreduce": None, "unrelated": 1})
    assert cfg.bn_group == 4 and cfg.allreduce == "torus2d"


def test_no_preset_trains_on_the_chip_with_one_accelerator_and_cpu8_digits_on_cpu(monkeypatch):
    # LABKIT_COMPUTE_DEVICES=1 is labkit's documented rehearsal of the one-accelerator plan (README, device plan):
    # the first CPU device plays the chip, the mesh lessons stay on the simulated devices.
    monkeypatch.delenv("LABKIT_COMPUTE_DEVICES", raising=False)
    assert config_from_parameters(None, {}) == config_from_parameters("cpu8-digits", {})
    monkeypatch.setenv("LABKIT_COMPUTE_DEVICES", "1")
    on_chip = config_from_parameters(None, {"bn_group": None})
    assert on_chip == config_from_parameters("colab", {})
    assert (on_chip.shape, on_chip.bn_group) == ("1x1", 1)  # one replica: the chip, not the 8 simulated devices
    nb = nbformat.read(DEFAULT_NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert "\npreset = None" in "\n" + params.source  # 04 names no preset: the plan decides


def test_notebook_parameters_cell_exposes_every_config_key():
    from labkit.config import Config
    nb = nbformat.read(DEFAULT_NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    names = {line.split("=")[0].strip() for line in cell.source.splitlines() if "=" in line and not line.startswith("#")}
    assert set(Config.keys()) <= names and {"preset", "workdir"} <= names


@pytest.mark.slow
def test_override_and_two_value_sweep(tmp_path, capsys):
    rc = cli.main(["run", *TINY, "--sweep", "bn_group=2,4", "--name", "sw", "--runs-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = _index(tmp_path)
    assert [r["name"] for r in rows] == ["sw-bn_group=2", "sw-bn_group=4"] and {r["status"] for r in rows} == {"ok"}
    for row, g in zip(rows, (2, 4)):
        run_dir = tmp_path / row["name"]
        params = json.loads(row["parameters"])
        assert params["bn_group"] == g and params["model"] == "resnet_tiny"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["steps"] == 7 and float(row["top1"]) == pytest.approx(summary["top1"])
        executed = nbformat.read(run_dir / "04_train.ipynb", as_version=4)
        injected = next(c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", []))
        assert f"bn_group = {g}" in injected.source
        start = json.loads((run_dir / "telemetry.jsonl").read_text().splitlines()[0])
        assert start["kind"] == "run" and start["bn_group"] == g
        assert (run_dir / "dashboard.html").stat().st_size > 10_000
    assert "top-1" in out and "dashboard:" in out


@pytest.mark.slow
def test_bad_parameter_fails_with_labkits_message(tmp_path, capsys):
    rc = cli.main(["run", "-p", "allreduce", "butterfly", "--name", "bad", "--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "config.allreduce: 'butterfly' is not allowed; allowed values:" in err
    row = _index(tmp_path)[0]
    assert row["status"] == "failed" and "butterfly" in row["error"]
    executed = (tmp_path / "bad" / "04_train.ipynb").read_text()
    assert "config.allreduce: 'butterfly' is not allowed" in executed  # visible in the output notebook


def test_unknown_parameter_fails_before_any_work(tmp_path, capsys):
    t0 = time.perf_counter()
    rc = cli.main(["run", "-p", "nonexistent_param", "1", "--name", "x", "--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and time.perf_counter() - t0 < 30  # no kernel was started, nothing trained
    assert "unknown notebook parameter(s) ['nonexistent_param'] for 04_train.ipynb; allowed:" in err
    assert "'bn_group'" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no run directory, no index row
    assert cli.main(["run", "--sweep", "bn_grup=1,2", "--runs-dir", str(tmp_path)]) == 2
    assert "['bn_grup']" in capsys.readouterr().err


@pytest.mark.slow
def test_failed_start_keeps_nothing_then_the_fix_runs_then_a_rerun_leaves_it_untouched(tmp_path, capsys):
    missing = tmp_path / "no-such-data"
    args = ["run", *TINY, "--name", "r", "--runs-dir", str(tmp_path)]
    assert cli.main([*args, "-p", "dataset", "tfrecords", "-p", "data_dir", str(missing)]) == 1
    err = capsys.readouterr().err
    assert f"data directory '{missing}' does not exist" in err
    run_dir = tmp_path / "r"
    assert not (run_dir / "config.json").exists() and not list(run_dir.glob("telemetry*.jsonl"))

    assert cli.main(args) == 0  # the corrected command is not refused as "a different config"
    out = capsys.readouterr().out
    assert "  training: resnet_tiny on digits, 7 steps" in out and "  step 6/7" in out  # progress lines
    assert "  cell 1/" in out  # and a line per cell before training starts
    assert "Kernel" not in out and "tensorflow" not in out.lower()  # kernel/TF noise goes to kernel.log
    assert "index: " in out and "(2 run(s), 1 failed; this command: 1 run, 0 failed)" in out
    summary = (run_dir / "summary.json").read_bytes()
    assert json.loads(summary)["stopped"] == "epochs"

    t0 = time.perf_counter()
    assert cli.main(args) == 0  # the same command again: the finished run stays untouched
    assert time.perf_counter() - t0 < 10
    out = capsys.readouterr().out
    assert f"already finished: {run_dir} is left untouched" in out
    assert (run_dir / "summary.json").read_bytes() == summary and len(_index(tmp_path)) == 2


def test_make_lab_opens_the_notebooks_in_jupyterlab_and_nbconvert_exports_them(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(["make", "-n", "lab", f"VENV={Path(sys.executable).parent.parent}"], cwd=repo,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "/bin/jupyter lab --ip 127.0.0.1 --port 8888 --notebook-dir notebooks" in dry.stdout
    version = subprocess.run([str(Path(sys.executable).parent / "jupyter-lab"), "--version"], capture_output=True,
                             text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.strip().startswith("4."), version.stderr
    from nbconvert import HTMLExporter
    body, _ = HTMLExporter().from_filename(str(repo / "notebooks" / "00_setup.ipynb"))
    assert "<html" in body and "labkit" in body


@pytest.mark.parametrize("checkpoint", [40, None])
def test_ctrl_c_during_a_run_prints_one_line_with_the_checkpoint_and_the_resume_command(tmp_path, capsys,
                                                                                        monkeypatch, checkpoint):
    import papermill as pm

    def interrupted(notebook, output, parameters, **kwargs):  # what papermill raises when Ctrl-C hits it
        workdir = tmp_path / "r"
        (workdir / "config.json").write_text("{}")
        if checkpoint is not None:
            (workdir / "checkpoints" / str(checkpoint)).mkdir(parents=True)
            (workdir / "checkpoints" / "20").mkdir()
        raise KeyboardInterrupt
    monkeypatch.setattr(pm, "execute_notebook", interrupted)
    monkeypatch.setattr("sys.argv", ["labkit", "run", "-p", "bn_group", "4", "--name", "r", "--runs-dir",
                                     str(tmp_path)])
    rc = cli.main(["run", "-p", "bn_group", "4", "--name", "r", "--runs-dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert rc == 130
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err
    resume = f"labkit run -p bn_group 4 --name r --runs-dir {tmp_path}"
    if checkpoint is None:
        assert lines[0] == f"labkit run: interrupted before the first checkpoint; nothing kept. Start again with: {resume}"
        assert not (tmp_path / "r" / "config.json").exists()
    else:
        assert lines[0] == (f"labkit run: interrupted; checkpoint kept: step 40 in {tmp_path / 'r' / 'checkpoints'}. "
                            f"Resume with: {resume}")
        assert (tmp_path / "r" / "config.json").exists()


def test_a_run_shows_a_line_per_cell_and_sends_kernel_noise_to_kernel_log(tmp_path, capfd, monkeypatch):
    start = {"kind": "run", "phase": "start", "model": "m", "dataset": "d", "total_steps": 3, "time": 0.0}
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 1\nworkdir = None", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import sys\nprint('to stderr', file=sys.stderr)\nprint(x * 2)\n"
                                  f"_ = open(workdir + '/telemetry.jsonl', 'w').write({json.dumps(start)!r} + '\\n')"),
        nbformat.v4.new_code_cell("import time\ntime.sleep(3)"), nbformat.v4.new_code_cell("y = 0")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "tiny.ipynb")
    monkeypatch.chdir(tmp_path)  # a relative runs dir: papermill chdirs to the notebook's folder meanwhile
    runs = tmp_path / "runs"
    assert cli.main(["run", str(tmp_path / "tiny.ipynb"), "-p", "x", "21", "--name", "t", "--runs-dir",
                     "runs"]) == 0
    out, err = capfd.readouterr()
    lines = [line for line in out.splitlines() if line.startswith(("  cell ", "  training"))]
    assert lines == ["  cell 1/5", "  cell 2/5", "  cell 3/5", "  cell 4/5", "  training: m on d, 3 steps",
                     "  cell 5/5"]  # telemetry is followed while the notebook runs, not only at its end
    assert "Kernel is running" not in out + err and "IPKernelApp" not in out + err  # in kernel.log instead
    assert "this command: 1 run, 0 failed" in out
    executed = nbformat.read(runs / "t" / "tiny.ipynb", as_version=4)
    assert sorted(o["text"] for o in executed.cells[-3].outputs) == ["42\n", "to stderr\n"]  # kept in the notebook
