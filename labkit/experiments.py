"""experiments: the paper's claims reproduced in miniature on Fashion-MNIST: run, collect, load and plot.

Owns the three experiments (``EXPERIMENTS``), each a set of ``labkit run --sweep`` commands over a preset:
  bn_groups     BN group size g in {1, 2, 4, 8} at 4 images per replica, 3 seeds: final top-1 (distributed BN)
  large_batch   LARS vs SGD-Nesterov as the global batch grows, same epochs: final top-1 (large-batch training)
  input_ladder  rungs of the input ladder: time to 65% top-1 and the accuracy curves (input pipeline)
``collect`` turns a sweep's ``runs/.../index.csv`` and run directories into ``labkit/results/<experiment>/``: a CSV of
runs (``results.csv``; ``curves.csv`` of evaluations over wall time), ``figure.png``, ``command.txt`` and
``machine.txt``. ``load`` reads them back, ``plot`` draws them, ``summarize`` states the numbers,
``recompute`` runs the commands again (minutes each on a 2-core CPU) and collects.
Must not: train (``labkit run`` does, through notebook 04) or reach into training internals (it reads
summary.json, config.json and telemetry.jsonl of finished runs).
"""
from __future__ import annotations

import csv
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

__all__ = ["EXPERIMENTS", "RESULTS_DIR", "collect", "load", "plot", "summarize", "recompute"]

# Package data (pyproject's package-data), so an installed labkit (Colab's pip install) has them too.
RESULTS_DIR = Path(__file__).resolve().parent / "results"

EXPERIMENTS = {
    "bn_groups": {
        "title": "BN group size vs final top-1 at 4 images per replica (Fashion-MNIST, resnet_tiny, 8 replicas)",
        "commands": ["labkit run -p preset fmnist-bn-groups --sweep bn_group=1,2,4,8 --sweep seed=0,1,2 "
                     "--name bn --runs-dir runs/bn_groups"],
        "columns": ("bn_group", "seed", "per_replica_batch", "bn_batch", "top1", "steps", "images_per_s",
                    "wall_time_s"),
        "note": "the committed runs: the same sweep split by seed into three parallel commands "
                "(--sweep seed=0 / 1 / 2; identical run names and configs)",
    },
    "large_batch": {
        "title": "LARS vs SGD as the global batch grows, same epochs (Fashion-MNIST 16 px, resnet_tiny, 8 replicas)",
        "commands": ["labkit run -p preset fmnist-large-batch -p optimizer sgd --sweep base_lr=0.1,0.4 "
                     "--sweep global_batch=4096,1024,256 --name sgd --runs-dir runs/large_batch",
                     "labkit run -p preset fmnist-large-batch -p optimizer lars --sweep base_lr=1,4 "
                     "--sweep global_batch=4096,1024,256 --name lars --runs-dir runs/large_batch"],
        "columns": ("optimizer", "base_lr", "global_batch", "peak_lr", "steps", "top1", "images_per_s",
                    "wall_time_s"),
    },
    "input_ladder": {
        "title": "Input ladder vs time to 65% top-1 (Fashion-MNIST, resnet_tiny, batch 256, 8 replicas)",
        "commands": ["labkit run -p preset fmnist-input-ladder "
                     "--sweep input_rung=naive,parallel_map,private_threadpool --name ladder "
                     "--runs-dir runs/input_ladder"],
        "columns": ("input_rung", "time_to_accuracy_s", "top1", "steps", "images_per_s", "input_wait_s",
                    "wall_time_s"),
    },
}


def _check(name: str) -> dict:
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment: {name!r} is unknown; allowed: {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def _runs_dir_of(command: str) -> str:
    words = shlex.split(command)
    return words[words.index("--runs-dir") + 1]


def _index_rows(index: Path) -> list[dict]:
    """The last row per run name of a ``labkit run`` index, ok runs only."""
    rows: dict[str, dict] = {}
    with open(index, newline="") as f:
        for row in csv.DictReader(f):
            rows[row["name"]] = row
    return [r for r in rows.values() if r["status"] == "ok"]


def _events(run_dir: Path, kinds: tuple[str, ...]) -> list[dict]:
    path = run_dir / "telemetry.jsonl"
    if not path.is_file():
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of a killed run
            if e.get("kind") in kinds:
                out.append(e)
    return out


def _row(name: str, run_dir: Path, index_row: dict) -> tuple[dict, list[dict]]:
    config = json.loads((run_dir / "config.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    row = {"run": run_dir.name, "top1": summary.get("top1"), "steps": summary.get("steps"),
           "images_per_s": summary.get("images_per_s"), "wall_time_s": summary.get("wall_time_s"),
           "time_to_accuracy_s": summary.get("time_to_accuracy_s")}
    replicas = 8
    row.update(bn_group=config["bn_group"], seed=config["seed"], optimizer=config["optimizer"],
               global_batch=config["global_batch"], input_rung=config.get("input_rung") or "all",
               per_replica_batch=config["global_batch"] // replicas,
               bn_batch=config["global_batch"] // replicas * config["bn_group"],
               base_lr=config["base_lr"],
               peak_lr=config["peak_lr"] or config["base_lr"] * config["global_batch"] / 256)
    row["input_wait_s"] = summary.get("input_wait_s")  # the whole run's wait for input batches
    events = _events(run_dir, ("run", "eval"))
    start = next((e["time"] for e in events if e["kind"] == "run" and e.get("phase") == "start"), None)
    end = next((e["time"] for e in events if e["kind"] == "run" and e.get("phase") == "end"), None)
    if start is not None and end is not None and isinstance(summary.get("wall_time_s"), (int, float)):
        start -= summary["wall_time_s"] - (end - start)  # the clock of time_to_accuracy_s: setup included
    curve = [{"run": run_dir.name, "input_rung": row["input_rung"], "optimizer": row["optimizer"],
              "global_batch": row["global_batch"], "bn_group": row["bn_group"], "seed": row["seed"],
              "step": e["step"], "time_s": e["time"] - start if start else None, "top1": e.get("top1")}
             for e in events if e["kind"] == "eval"]
    return row, curve


def _write_csv(path: Path, rows: list[dict], columns) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r.get(k) is None else r[k] for k in columns})


def _machine(rows: list[dict]) -> str:
    import jax
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() \
        else platform.processor()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,)
    walls = sorted(r["wall_time_s"] for r in rows if isinstance(r.get("wall_time_s"), (int, float)))
    runtime = (f"runtime: {len(walls)} runs, {walls[0]:.0f}-{walls[-1]:.0f} s each (median "
               f"{statistics.median(walls):.0f} s), {sum(walls) / 60:.0f} min in all (wall, compile and "
               "evaluation included)\n") if walls else ""
    return (f"machine: {cpu}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}\n"
            f"devices: 8 simulated CPU devices (XLA host platform): every timing is a simulation\n"
            f"python {platform.python_version()}, jax {jax.__version__}\n"
            f"load average when collected: {load[0]:.1f} (a shared machine: timings are noisy)\n"
            f"collected: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n" + runtime)


def collect(name: str, runs_root: str | os.PathLike = ".", results_dir: str | os.PathLike | None = None,
            *, machine: str | None = None) -> Path:
    """Gather experiment ``name``'s finished runs (under ``runs_root``, where its commands ran) into
    ``results_dir/name`` (default: ``labkit/results/``, what is committed): CSVs, figure, command and machine."""
    spec = _check(name)
    out = Path(results_dir or RESULTS_DIR) / name
    rows, curves, seen = [], [], set()
    for command in spec["commands"]:
        runs_dir = Path(runs_root) / _runs_dir_of(command)
        index = runs_dir / "index.csv"
        if not index.is_file():
            raise FileNotFoundError(f"experiment {name}: no {index}; run first: {command}")
        for r in _index_rows(index):
            run_dir = runs_dir / Path(r["run_dir"]).name
            if r["name"] in seen or not (run_dir / "summary.json").is_file():
                continue
            seen.add(r["name"])
            row, curve = _row(name, run_dir, r)
            rows.append(row)
            curves.extend(curve)
    if not rows:
        raise ValueError(f"experiment {name}: no finished runs under {Path(runs_root).resolve()}")
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "results.csv", rows, ("run",) + spec["columns"])
    _write_csv(out / "curves.csv", curves, ("run", "input_rung", "optimizer", "global_batch", "bn_group", "seed",
                                            "step", "time_s", "top1"))
    (out / "command.txt").write_text("# run from the repository root (CPU, 8 simulated devices), niced:\n"
                                     + "".join(f"nice -n 10 {c}\n" for c in spec["commands"])
                                     + (f"# note: {spec['note']}\n" if spec.get("note") else "")
                                     + f"# then: python -c \"from labkit import experiments; "
                                       f"experiments.collect('{name}')\"\n")
    (out / "machine.txt").write_text(machine or _machine(rows))
    plot(name, load(name, out.parent)).save(out / "figure.png")
    return out


def _typed(v: str):
    if v == "":
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def load(name: str, results_dir: str | os.PathLike | None = None) -> dict:
    """``{"runs": [row, ...], "curves": [...], "command": str, "machine": str}`` from ``labkit/results/<name>/``."""
    _check(name)
    folder = Path(results_dir or RESULTS_DIR) / name
    if not (folder / "results.csv").is_file():
        raise FileNotFoundError(f"experiment {name}: {folder / 'results.csv'} is missing; run "
                                f"labkit.experiments.recompute({name!r}) (or see RESULTS.md)")

    def read(file):
        if not (folder / file).is_file():
            return []
        with open(folder / file, newline="") as f:
            return [{k: _typed(v) for k, v in r.items()} for r in csv.DictReader(f)]
    text = {f: (folder / f"{f}.txt").read_text() if (folder / f"{f}.txt").is_file() else ""
            for f in ("command", "machine")}
    return {"runs": read("results.csv"), "curves": read("curves.csv"), **text}


def _by(rows, key) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(r[key], []).append(r)
    return dict(sorted(out.items(), key=lambda kv: (isinstance(kv[0], str), kv[0])))


def _mean_sd(values) -> tuple[float, float]:
    values = [v for v in values if isinstance(v, (int, float))]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _by_optimizer(rows) -> dict:
    """Rows by optimizer and base LR: 'SGD (LR 0.2 x B/256)', 'LARS (LR 1 x B/256)', ..."""
    out: dict = {}
    for r in sorted(rows, key=lambda r: (r["optimizer"] != "sgd", r["base_lr"])):
        out.setdefault(f"{r['optimizer'].upper()} (LR {r['base_lr']:g} x B/256)", []).append(r)
    return out


def _best_per_batch(rows) -> dict:
    """{optimizer: [the run with the best top-1 at each global batch, over the LR grid]} (ascending batch)."""
    out: dict = {}
    for opt, rs in _by(rows, "optimizer").items():
        out[opt] = [max(b, key=lambda r: r["top1"]) for _, b in _by(rs, "global_batch").items()]
    return dict(sorted(out.items(), key=lambda kv: kv[0] != "sgd"))


_LADDER_ORDER = ("naive", "interleave", "parallel_map", "fused_crop", "cache", "bfloat16", "prefetch",
                 "private_threadpool", "all")


def summarize(name: str, data: dict) -> str:
    """The experiment's numbers as a few plain lines (what the figure shows)."""
    _check(name)
    runs, lines = data["runs"], []
    if name == "bn_groups":
        for g, rs in _by(runs, "bn_group").items():
            m, sd = _mean_sd(r["top1"] for r in rs)
            seeds = ", ".join(format(r["top1"], ".4f") for r in sorted(rs, key=lambda r: r["seed"]))
            lines.append(f"g={g} (BN batch {rs[0]['bn_batch']}): top-1 {m:.4f} +- {sd:.4f} over {len(rs)} seeds "
                         f"({seeds})")
        by_seed = {(r["bn_group"], r["seed"]): r["top1"] for r in runs}
        pairs = [(v, by_seed[(1, s)]) for (g, s), v in by_seed.items() if g > 1 and (1, s) in by_seed]
        if pairs:
            wins = sum(v > base for v, base in pairs)
            gain = statistics.fmean(v - base for v, base in pairs)
            lines.append(f"paired by seed: g > 1 beats g = 1 in {wins} of {len(pairs)} pairs "
                         f"(mean gain {gain * 100:+.1f} points)")
        groups = sorted({g for g, _ in by_seed})
        for a, b in zip(groups, groups[1:]):  # each doubling, paired by seed
            lines.append(_paired(f"g={b} minus g={a}", by_seed, a, b))
        for g in groups[:-2]:  # the largest group against each smaller one (the ones not already a doubling)
            lines.append(_paired(f"g={groups[-1]} minus g={g}", by_seed, g, groups[-1]))
        sds = [_mean_sd(r["top1"] for r in rs)[1] for rs in _by(runs, "bn_group").values()]
        lines.append(f"noise: seed-to-seed sd of top-1 within one g: {min(sds) * 100:.1f}-{max(sds) * 100:.1f} "
                     "points; a difference is resolved here only if every paired seed agrees in sign and a "
                     "paired t-test says so at 95% (|mean| > t x its standard error; t = 4.30 for 3 seeds)")
    elif name == "large_batch":
        for label, rs in _by_optimizer(runs).items():
            cells = [f"{r['global_batch']}: {r['top1']:.4f} ({r['steps']} steps, peak LR {r['peak_lr']:g})"
                     for r in sorted(rs, key=lambda r: r["global_batch"])]
            lines.append(f"{label}: " + "; ".join(cells))
        best = _best_per_batch(runs)
        for opt, rs in best.items():
            lines.append(f"{opt.upper()} at its better LR per batch: "
                         + "; ".join(f"{r['global_batch']}: {r['top1']:.4f}" for r in rs))
        if {"sgd", "lars"} <= set(best):
            sgd = {r["global_batch"]: r["top1"] for r in best["sgd"]}
            gaps = [f"{r['global_batch']}: {(r['top1'] - sgd[r['global_batch']]) * 100:+.1f}"
                    for r in best["lars"] if r["global_batch"] in sgd]
            lines.append("LARS minus SGD (points, each at its better LR): " + "; ".join(gaps))
        seeds = {r.get("seed") for r in runs}
        lines.append(f"noise: {len(seeds)} seed per point, so this experiment measures no spread of its own"
                     if len(seeds) == 1 else f"noise: {len(seeds)} seeds per point")
    else:
        for r in sorted(runs, key=lambda r: _LADDER_ORDER.index(r["input_rung"])):
            tta = r["time_to_accuracy_s"]
            lines.append(f"{r['input_rung']}: time to 65% {'not reached' if tta is None else f'{tta:.1f} s'}, "
                         f"top-1 {r['top1']:.4f}, {r['images_per_s']:,.0f} images/s steady, "
                         f"input wait {r['input_wait_s'] or 0:.1f} s (simulation)")
        load = _collected_load(data.get("machine", ""))
        lines.append(f"timings: one run per rung, run one after another (not interleaved), on "
                     f"{'a machine of unknown load' if load is None else f'a machine at load average {load:g} when collected'}"
                     "; CPU simulation")
    return "\n".join(lines)


# Student's t, 97.5th percentile, by degrees of freedom (any table; beyond 10 the value for 10, which is larger
# than the true one, so the test only gets stricter).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def _paired(label: str, by_seed: dict, a, b) -> str:
    """Top-1 of g=b minus g=a over the seeds both have: mean, standard error, range, and whether it is resolved."""
    diffs = [by_seed[(b, s)] - by_seed[(a, s)] for (g, s) in sorted(by_seed) if g == a and (b, s) in by_seed]
    m, sd = _mean_sd(diffs)
    se = sd / math.sqrt(len(diffs)) if diffs else math.nan
    agree = all(d > 0 for d in diffs) or all(d < 0 for d in diffs)
    t = _T975.get(len(diffs) - 1, _T975[10])  # a paired t-test at 95%, two-sided
    verdict = "resolved" if len(diffs) > 1 and agree and abs(m) > t * se else "within noise"
    return (f"{label}: {m * 100:+.1f} points (se {se * 100:.1f}; seeds {', '.join(f'{d * 100:+.1f}' for d in diffs)})"
            f": {verdict}")


def _collected_load(machine: str) -> float | None:
    """The load average that ``machine.txt`` recorded when the results were collected (None if absent)."""
    for line in machine.splitlines():
        if line.startswith("load average when collected:"):
            try:
                return float(line.split(":", 1)[1].split()[0])
            except (IndexError, ValueError):
                return None
    return None


def plot(name: str, data: dict):
    """The experiment's figure (a ``labkit.figures.Plot``: shown as PNG in a notebook, ``save`` to a file)."""
    from labkit.figures import Plot
    from matplotlib.figure import Figure
    _check(name)
    runs = data["runs"]
    if name == "input_ladder":
        fig = Figure(figsize=(9.6, 3.6), layout="constrained")
        ax, bx = fig.subplots(1, 2)
    else:
        fig = Figure(figsize=(6.4, 3.8), layout="constrained")
        ax = fig.subplots(1, 1)
    colors = ["#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377"]
    if name == "bn_groups":
        groups = _by(runs, "bn_group")
        xs = list(groups)
        means = [_mean_sd(r["top1"] for r in rs) for rs in groups.values()]
        for k, (seed, rs) in enumerate(_by(runs, "seed").items()):  # thin lines pair the runs of one seed
            rs = sorted(rs, key=lambda r: r["bn_group"])
            ax.plot([r["bn_group"] for r in rs], [r["top1"] for r in rs], color="#bbbbbb", lw=0.8, marker="o",
                    ms=4, zorder=2, label="one seed (runs paired)" if k == 0 else None)
        ax.errorbar(xs, [m for m, _ in means], yerr=[sd for _, sd in means], color=colors[0], marker="o",
                    capsize=4, zorder=3, label="mean +- sd")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"g={g}\nBN batch {groups[g][0]['bn_batch']}" for g in xs])
        ax.set_xlabel("BN group size g (replicas whose statistics are summed)")
        ax.set_ylabel("final validation top-1")
        ax.set_title("BN group size at 4 images per replica", fontsize=10)
        ax.legend(fontsize=8)
    elif name == "large_batch":
        for k, (opt, rs) in enumerate(_best_per_batch(runs).items()):  # thick: the better LR at each batch
            ax.plot([r["global_batch"] for r in rs], [r["top1"] for r in rs], marker="o", lw=2.2, color=colors[k],
                    label=f"{opt.upper()}, better LR per batch", zorder=3)
            for r in rs:
                ax.annotate(f"{r['base_lr']:g}", (r["global_batch"], r["top1"]), fontsize=7, color=colors[k],
                            textcoords="offset points", xytext=(5, -10 if opt == "sgd" else 5))
            for j, (lr, lr_rs) in enumerate(_by([r for r in runs if r["optimizer"] == opt], "base_lr").items()):
                lr_rs = sorted(lr_rs, key=lambda r: r["global_batch"])  # thin: each LR of the grid
                ax.plot([r["global_batch"] for r in lr_rs], [r["top1"] for r in lr_rs], lw=0.8,
                        ls=("--", ":")[j % 2], color=colors[k], alpha=0.6,
                        label=f"{opt.upper()}, LR {lr:g} x B/256")
        ax.set_xscale("log", base=2)
        steps = {r["global_batch"]: r["steps"] for r in runs}
        ax.set_xticks(sorted(steps), [f"{b}\n{steps[b]} steps" for b in sorted(steps)])
        ax.axhline(0.1, color="#999999", lw=0.8, ls=":", label="chance (10%)")
        ax.set_xlabel("global batch (same number of epochs); labels: base LR of the better run")
        ax.set_ylabel("final validation top-1")
        ax.set_title("LARS vs SGD as the batch grows", fontsize=10)
        ax.legend(fontsize=7)
    else:
        order = sorted({r["input_rung"] for r in runs}, key=_LADDER_ORDER.index)
        for k, rung in enumerate(order):
            pts = sorted((c for c in data["curves"] if c["input_rung"] == rung and c["time_s"] is not None),
                         key=lambda c: c["time_s"])
            ax.plot([c["time_s"] for c in pts], [c["top1"] for c in pts], marker="o", color=colors[k], label=rung)
        ax.axhline(0.65, color="#999999", lw=0.8, ls="--")
        ax.set_xlabel("wall time, setup and compilation included (s, simulation)")
        ax.set_ylabel("validation top-1")
        ax.set_title("accuracy over wall time per input rung", fontsize=10)
        ax.legend(fontsize=8)
        ttas = {r["input_rung"]: r["time_to_accuracy_s"] for r in runs}
        bx.bar(order, [ttas[r] or 0 for r in order], color=colors[:len(order)])
        for k, rung in enumerate(order):
            bx.annotate("not reached" if ttas[rung] is None else f"{ttas[rung]:.0f} s", (k, ttas[rung] or 0),
                        ha="center", fontsize=8, textcoords="offset points", xytext=(0, 3))
        bx.set_ylabel("time to 65% top-1 (s, simulation)")
        load = _collected_load(data.get("machine", ""))
        bx.set_title("time to accuracy: one run per rung, not interleaved"
                     + ("" if load is None else f",\nload average {load:g} on the machine when collected"), fontsize=9)
    return Plot(fig, EXPERIMENTS[name]["title"])


def recompute(name: str, *, root: str | os.PathLike | None = None, results_dir: str | os.PathLike | None = None,
              nice: int = 10) -> Path:
    """Run experiment ``name``'s commands again from ``root`` (default: the current directory; runs go under its
    ``runs/``) with ``nice``, then ``collect`` into ``results_dir``. Minutes per run on a 2-core CPU; runs that
    already finished there are kept (``labkit run`` leaves them untouched)."""
    spec = _check(name)
    if results_dir is None and not (RESULTS_DIR.parent.parent / ".git").exists():
        raise ValueError(f"recompute: results_dir=None would overwrite the installed results in {RESULTS_DIR} "
                         "(labkit is installed, not a checkout); allowed: results_dir=<a folder of yours>, or run "
                         "from a git clone of labkit (its labkit/results/ is then the one to update)")
    root = Path(root) if root is not None else Path.cwd()
    labkit = [sys.executable, "-m", "labkit.cli"]
    for command in spec["commands"]:
        words = shlex.split(command)[1:]  # drop "labkit"
        subprocess.run(["nice", "-n", str(nice), *labkit, *words], cwd=root, check=True)
    return collect(name, root, results_dir)
