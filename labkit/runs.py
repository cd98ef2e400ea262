"""runs: ``labkit run``: execute a notebook with papermill into ``runs/<name>/`` and index the results.

Owns turning ``-p key value`` / ``--sweep key=v1,v2`` into papermill executions, the run directory layout
(executed notebook, telemetry.jsonl, summary.json, dashboard.html: the notebook writes the last three into its
``workdir`` parameter), the results index ``runs/index.csv``, and ``config_from_parameters`` for the notebook's
parameters cell. Must not: train or evaluate itself (the notebook does, through labkit).
"""
from __future__ import annotations

import csv
import datetime
import itertools
import json
import sys
from pathlib import Path

__all__ = ["HELP", "add_arguments", "run", "run_notebook", "config_from_parameters", "default_workdir",
           "INDEX_COLUMNS"]

HELP = "execute a notebook with papermill into runs/<name>/ (parameters, sweeps) and index the results"
DEFAULT_NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "04_train.ipynb"
INDEX_COLUMNS = ("name", "notebook", "status", "parameters", "top1", "best_top1", "time_to_accuracy_s",
                 "images_per_s", "steps", "wall_time_s", "simulated", "run_dir", "finished_at", "error")


def config_from_parameters(preset: str, namespace: dict):
    """The preset's ``Config`` with every config key that ``namespace`` (the notebook's globals) sets to a value
    other than None. Errors name the key and the allowed values (``labkit.config.ConfigError``)."""
    from labkit.config import Config
    from labkit.presets import get_preset
    values = {k: namespace[k] for k in Config.keys() if namespace.get(k) is not None}
    return get_preset(preset).override(values)


def default_workdir(name: str, runs_dir: str | Path = "runs") -> str:
    """A fresh run directory ``runs/<name>-<date-time>`` (a re-run notebook starts a new run, not a resume)."""
    return str(Path(runs_dir) / f"{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}")


def _typed(value: str):
    """papermill-style inference for ``-p`` values: int, float, bool, None, else the string."""
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(value.lower(), value)


def _sweep_points(sweeps: list[str]) -> list[dict]:
    axes = []
    for item in sweeps:
        if "=" not in item or not item.split("=", 1)[1]:
            raise ValueError(f"--sweep: expected KEY=V1,V2,..., got {item!r}")
        key, values = item.split("=", 1)
        axes.append([(key.strip(), _typed(v.strip())) for v in values.split(",") if v.strip()])
    return [dict(point) for point in itertools.product(*axes)] if axes else [{}]


def run_notebook(notebook: str | Path, parameters: dict, name: str, runs_dir: str | Path = "runs",
                 kernel: str = "python3") -> dict:
    """Execute ``notebook`` with ``parameters`` (plus ``workdir=runs_dir/name``); returns its index row."""
    import papermill as pm
    notebook, run_dir = Path(notebook), Path(runs_dir) / name
    if not notebook.is_file():
        raise FileNotFoundError(f"labkit run: notebook {str(notebook)!r} does not exist")
    run_dir.mkdir(parents=True, exist_ok=True)
    params = dict(parameters, workdir=str(run_dir.resolve()))
    row = {"name": name, "notebook": str(notebook), "parameters": json.dumps(parameters, sort_keys=True),
           "run_dir": str(run_dir), "status": "ok", "error": ""}
    try:
        pm.execute_notebook(str(notebook), str(run_dir / notebook.name), parameters=params, kernel_name=kernel,
                            progress_bar=False, cwd=str(notebook.parent))
    except pm.PapermillExecutionError as e:  # the notebook's own error: labkit's message is in evalue
        row.update(status="failed", error=f"{e.ename}: {e.evalue}")
    summary_file = run_dir / "summary.json"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        row.update({k: summary.get(k) for k in ("top1", "best_top1", "time_to_accuracy_s", "images_per_s",
                                                "steps", "wall_time_s", "simulated")})
    row["finished_at"] = datetime.datetime.now().isoformat(timespec="seconds")
    _append_index(Path(runs_dir) / "index.csv", row)
    return row


def _append_index(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=INDEX_COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in INDEX_COLUMNS})


def add_arguments(parser) -> None:
    parser.add_argument("notebook", nargs="?", default=str(DEFAULT_NOTEBOOK),
                        help="the notebook to execute (default: notebooks/04_train.ipynb, the full training run)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="a notebook parameter, e.g. -p bn_group 8 -p allreduce torus2d (repeatable)")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                        help="run once per value (several --sweep: every combination)")
    parser.add_argument("--name", default=None, help="run name (default: notebook name + time)")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--kernel", default="python3")


def run(args) -> int:
    base = {k: _typed(v) for k, v in args.parameter}
    stem = args.name or Path(default_workdir(Path(args.notebook).stem)).name
    points = _sweep_points(args.sweep)
    failed = 0
    for point in points:
        name = stem + "".join(f"-{k}={v}" for k, v in point.items())
        print(f"labkit run: {name}: {args.notebook} with {json.dumps({**base, **point}, sort_keys=True)}",
              flush=True)
        row = run_notebook(args.notebook, {**base, **point}, name, args.runs_dir, args.kernel)
        failed += row["status"] != "ok"
        _print_row(row, Path(args.notebook).name)
    print(f"index: {Path(args.runs_dir) / 'index.csv'} ({len(points)} run(s), {failed} failed)")
    return 1 if failed else 0


def _print_row(row: dict, notebook_name: str) -> None:
    run_dir = Path(row["run_dir"])
    if row["status"] != "ok":
        print(f"  FAILED: {row['error']}\n  executed notebook (with the error): {run_dir / notebook_name}",
              file=sys.stderr)
        return
    fmt = lambda v, f: "n/a" if v in (None, "") else format(v, f)  # noqa: E731
    sim = " (simulated CPU devices: not a hardware number)" if row.get("simulated") else ""
    print(f"  top-1 {fmt(row.get('top1'), '.4f')}; time to accuracy {fmt(row.get('time_to_accuracy_s'), '.1f')} s; "
          f"{fmt(row.get('images_per_s'), ',.0f')} images/s{sim}")
    print(f"  run directory: {run_dir}  (executed notebook, telemetry.jsonl, summary.json)")
    if (run_dir / "dashboard.html").is_file():
        print(f"  dashboard: {run_dir / 'dashboard.html'} (static), or live: labkit dashboard {run_dir}")
