"""labkit.experiments: sweeps are collected into results/ faithfully, and the committed results are complete."""
import csv
import json

import pytest

from labkit import experiments
from labkit.config import Config


def _fake_run(runs_dir, name, config, summary, evals=()):
    run_dir = runs_dir / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(config.to_json())
    (run_dir / "summary.json").write_text(json.dumps(summary))
    events = [{"kind": "run", "phase": "start", "time": 100.0, "step": 0}]
    events += [{"kind": "eval", "time": 100.0 + t, "step": s, "top1": a} for s, t, a in evals]
    (run_dir / "telemetry.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return {"name": name, "status": "ok", "run_dir": str(run_dir)}


def _write_index(runs_dir, rows):
    with open(runs_dir / "index.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["name", "status", "run_dir"])
        writer.writeheader()
        writer.writerows(rows)


def test_collect_writes_the_runs_figure_command_and_machine(tmp_path):
    runs = tmp_path / "runs" / "input_ladder"
    base = Config(dataset="fashion_mnist", global_batch=256)
    rows = [_fake_run(runs, "ladder-input_rung=naive", base.replace(input_rung="naive"),
                      {"top1": 0.71, "steps": 96, "images_per_s": 400.0, "wall_time_s": 90.0,
                       "time_to_accuracy_s": 80.5, "input_wait_s": 0.75}, evals=[(32, 30.0, 0.5), (64, 60.0, 0.71)]),
            _fake_run(runs, "ladder-input_rung=private_threadpool", base.replace(input_rung="private_threadpool"),
                      {"top1": 0.69, "steps": 160, "images_per_s": 900.0, "wall_time_s": 70.0,
                       "time_to_accuracy_s": None}, evals=[(32, 20.0, 0.69)])]
    rows.append({"name": "ladder-input_rung=prefetch", "status": "failed", "run_dir": str(runs / "x")})
    _write_index(runs, rows)
    out = experiments.collect("input_ladder", tmp_path, tmp_path / "results", machine="test machine\n")
    data = experiments.load("input_ladder", tmp_path / "results")
    assert [(r["input_rung"], r["time_to_accuracy_s"], r["top1"]) for r in data["runs"]] == \
        [("naive", 80.5, 0.71), ("private_threadpool", None, 0.69)]
    assert data["runs"][0]["input_wait_s"] == 0.75 and data["runs"][1]["input_wait_s"] is None
    assert [(c["input_rung"], c["time_s"], c["top1"]) for c in data["curves"]] == \
        [("naive", 30.0, 0.5), ("naive", 60.0, 0.71), ("private_threadpool", 20.0, 0.69)]
    assert data["machine"] == "test machine\n"
    assert "labkit run -p preset fmnist-input-ladder" in data["command"]
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = experiments.summarize("input_ladder", data)
    assert "naive: time to 65% 80.5 s" in text and "private_threadpool: time to 65% not reached" in text


def test_collect_without_runs_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run first: labkit run -p preset fmnist-bn-groups"):
        experiments.collect("bn_groups", tmp_path, tmp_path / "results")
    with pytest.raises(ValueError, match=r"'bn' is unknown; allowed: \['bn_groups', 'input_ladder', 'large_batch'\]"):
        experiments.load("bn")


def test_committed_results_are_complete():
    bn = experiments.load("bn_groups")["runs"]
    assert sorted((r["bn_group"], r["seed"]) for r in bn) == [(g, s) for g in (1, 2, 4, 8) for s in (0, 1, 2)]
    assert {(r["per_replica_batch"], r["bn_batch"] // r["bn_group"]) for r in bn} == {(4, 4)}
    large = experiments.load("large_batch")["runs"]
    assert sorted((r["optimizer"], r["base_lr"], r["global_batch"]) for r in large) == \
        sorted((o, lr, b) for o, lr in (("sgd", 0.1), ("sgd", 0.4), ("lars", 1.0), ("lars", 4.0))
               for b in (256, 1024, 4096))
    assert {(r["global_batch"], r["steps"]) for r in large} == {(256, 1404), (1024, 348), (4096, 84)}  # 6 epochs
    ladder = experiments.load("input_ladder")["runs"]
    assert {r["input_rung"] for r in ladder} == {"naive", "parallel_map", "private_threadpool"}
    for name in experiments.EXPERIMENTS:
        folder = experiments.RESULTS_DIR / name
        assert (folder / "figure.png").is_file() and "simulated" in (folder / "machine.txt").read_text()


def test_large_batch_compares_each_optimizer_at_its_better_lr(tmp_path):
    runs = tmp_path / "runs" / "large_batch"
    base = Config(dataset="fashion_mnist", optimizer="sgd")
    top1 = {("sgd", 0.1, 256): 0.80, ("sgd", 0.4, 256): 0.78, ("sgd", 0.1, 4096): 0.60, ("sgd", 0.4, 4096): 0.65,
            ("lars", 1.0, 256): 0.79, ("lars", 4.0, 256): 0.81, ("lars", 1.0, 4096): 0.72, ("lars", 4.0, 4096): 0.10}
    rows = [_fake_run(runs, f"{o}-{lr}-{b}", base.replace(optimizer=o, base_lr=lr, global_batch=b),
                      {"top1": a, "steps": 1404 if b == 256 else 84, "images_per_s": 1.0, "wall_time_s": 1.0})
            for (o, lr, b), a in top1.items()]
    _write_index(runs, rows)
    out = experiments.collect("large_batch", tmp_path, tmp_path / "results", machine="m\n")
    data = experiments.load("large_batch", tmp_path / "results")
    assert {(r["optimizer"], r["base_lr"], r["global_batch"], r["peak_lr"]) for r in data["runs"]} >= \
        {("sgd", 0.4, 4096, 6.4), ("lars", 4.0, 256, 4.0)}  # peak LR = base LR x B/256
    text = experiments.summarize("large_batch", data)
    assert "SGD at its better LR per batch: 256: 0.8000; 4096: 0.6500" in text
    assert "LARS at its better LR per batch: 256: 0.8100; 4096: 0.7200" in text
    assert "LARS minus SGD (points, each at its better LR): 256: +1.0; 4096: +7.0" in text
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bn_groups_summary_states_paired_differences_and_whether_noise_resolves_them():
    """Each doubling of g, paired by seed: mean, standard error (sd / sqrt(n)), every seed's difference, and a
    verdict: 'resolved' only if all seeds agree in sign and |mean| > t se, t = 4.303 (Student's t, 2 degrees of
    freedom, 97.5%: any statistics table), computed here by hand."""
    top1 = {(1, 0): 0.60, (1, 1): 0.62, (1, 2): 0.61,     # g=2 - g=1: +2.0, +2.0, +3.0 -> mean 2.33, se 0.33
            (2, 0): 0.62, (2, 1): 0.64, (2, 2): 0.64,     # g=4 - g=2: +1.0, -1.0, +0.1 -> mixed signs
            (4, 0): 0.63, (4, 1): 0.63, (4, 2): 0.641}
    runs = [{"bn_group": g, "seed": s, "bn_batch": 4 * g, "top1": v} for (g, s), v in top1.items()]
    text = experiments.summarize("bn_groups", {"runs": runs, "machine": ""})
    assert "g=2 minus g=1: +2.3 points (se 0.3; seeds +2.0, +2.0, +3.0): resolved" in text  # 2.33 > 4.303 x 0.33
    assert "g=4 minus g=2: +0.0 points (se 0.6; seeds +1.0, -1.0, +0.1): within noise" in text
    # 2.37 > 2 x 0.67 but < 4.303 x 0.67: same signs, yet three seeds cannot resolve it at 95%
    assert "g=4 minus g=1: +2.4 points (se 0.7; seeds +3.0, +1.0, +3.1): within noise" in text
    # sds: g=1 1.0, g=2 1.15, g=4 0.64 points: the spread line gives the smallest and the largest
    assert "seed-to-seed sd of top-1 within one g: 0.6-1.2 points" in text


def test_ladder_summary_says_how_its_timings_were_taken():
    runs = [{"input_rung": "naive", "time_to_accuracy_s": 10.0, "top1": 0.7, "images_per_s": 5.0,
             "input_wait_s": 1.0}]
    loaded = experiments.summarize("input_ladder", {"runs": runs, "machine": "x\nload average when collected: 27.3 "
                                                                             "(a shared machine)\n"})
    assert "not interleaved" in loaded and "load average 27.3 when collected" in loaded
    assert "a machine of unknown load" in experiments.summarize("input_ladder", {"runs": runs, "machine": "x\n"})


def test_an_installed_labkit_carries_every_committed_result(tmp_path):
    """Colab installs labkit with pip (no checkout): 06's experiments and 02's reference run must be in the wheel
    (pyproject's package-data); a file left out makes the notebook fail there (measured in a Colab stand-in)."""
    import subprocess
    import sys
    import zipfile
    import shutil
    root, src = experiments.RESULTS_DIR.parent.parent, tmp_path / "src"  # built from a copy: no build/ in the tree
    shutil.copytree(root / "labkit", src / "labkit", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    from importlib import metadata
    try:  # the venv's own setuptools where it meets pyproject's requirement (no index needed), else pip fetches one
        isolation = [] if int(metadata.version("setuptools").split(".")[0]) < 77 else ["--no-build-isolation"]
    except metadata.PackageNotFoundError:
        isolation = []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w",
                    str(tmp_path), str(src)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("labkit-*.whl")
    packed = set(zipfile.ZipFile(wheel).namelist())
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "labkit/results"], capture_output=True, text=True)
    committed = (set(listed.stdout.split()) if listed.returncode == 0 else  # what git holds, else what is here
                 {p.relative_to(root).as_posix() for p in experiments.RESULTS_DIR.rglob("*") if p.is_file()})
    assert len(committed) >= 15 and committed <= packed, sorted(committed - packed)


def test_recompute_refuses_to_overwrite_an_installed_labkits_results(tmp_path, monkeypatch):
    """A pip-installed labkit (Colab) keeps its results in site-packages: recompute with results_dir=None must stop
    before running anything, naming the parameter; in a checkout (this one) it would update labkit/results/."""
    installed = tmp_path / "site-packages" / "labkit" / "results"
    installed.mkdir(parents=True)
    monkeypatch.setattr(experiments, "RESULTS_DIR", installed)
    monkeypatch.setattr(experiments.subprocess, "run", lambda *a, **k: pytest.fail("a sweep was started"))
    with pytest.raises(ValueError, match=r"recompute: results_dir=None would overwrite .*allowed: results_dir="):
        experiments.recompute("bn_groups")
