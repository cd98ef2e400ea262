"""runs: ``labkit run``: execute a notebook with papermill into ``runs/<name>/`` and index the results.

Owns turning ``-p key value`` / ``--sweep key=v1,v2`` into papermill executions (parameters checked against the
notebook's own ``parameters`` cell before anything runs), the run directory layout (executed notebook,
telemetry.jsonl, summary.json, dashboard.html: the notebook writes the last three into its ``workdir``
parameter), what a re-run, a failed start and Ctrl-C leave behind, the progress lines printed while a notebook
trains, the results index ``runs/index.csv``, and ``config_from_parameters`` for the notebook's parameters cell.
Must not: train or evaluate itself (the notebook does, through labkit), or compute what it prints (it reads
``summary.json`` and telemetry).
"""
from __future__ import annotations

import contextlib
import csv
import datetime
import io
import itertools
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

from labkit import storage

__all__ = ["HELP", "add_arguments", "run", "run_notebook", "default_preset", "config_from_parameters",
           "default_workdir", "INDEX_COLUMNS", "finished_summary", "discard_failed_start", "last_checkpoint", "interrupted_line"]

HELP = "execute a notebook with papermill into runs/<name>/ (parameters, sweeps) and index the results"
DEFAULT_NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "04_train.ipynb"
INDEX_COLUMNS = ("name", "notebook", "status", "parameters", "top1", "best_top1", "time_to_accuracy_s",
                 "images_per_s", "steps", "wall_time_s", "simulated", "run_dir", "finished_at", "error")
_FINISHED = ("target", "epochs")  # summary.json "stopped" values of a run that has nothing left to do


def default_preset() -> str:
    """The preset a run gets when none is named: ``colab`` (train on the chip) on the one-accelerator plan,
    ``cpu8-digits`` otherwise (CPU: 8 simulated devices; two or more accelerators: a torus of them)."""
    from labkit.mesh import device_plan
    return "colab" if device_plan().case == "one-accelerator" else "cpu8-digits"


def config_from_parameters(preset: str | None, namespace: dict):
    """The preset's ``Config`` (``default_preset()`` when None) with every config key that ``namespace`` (the
    notebook's globals) sets to a value other than None. Errors name the key and the allowed values
    (``labkit.config.ConfigError``)."""
    from labkit.config import Config
    from labkit.presets import get_preset
    values = {k: namespace[k] for k in Config.keys() if namespace.get(k) is not None}
    return get_preset(preset or default_preset()).override(values)


def default_workdir(name: str, runs_dir: str | Path = "runs") -> str:
    """A fresh run directory ``runs/<name>-<date-time>`` (a re-run notebook starts a new run, not a resume)."""
    return storage.join(runs_dir, f"{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}")  # runs_dir may be gs://


def finished_summary(run_dir: str | Path) -> dict | None:
    """``run_dir``'s summary when that run finished (target reached or all epochs done), else None."""
    path = storage.join(run_dir, "summary.json")
    try:
        summary = json.loads(storage.read_text(path))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("stopped") in _FINISHED else None


def last_checkpoint(workdir: str | Path) -> int | None:
    """The newest checkpoint step in ``workdir/checkpoints`` (Orbax step folders), or None."""
    folder = storage.join(workdir, "checkpoints")
    steps = ([int(n) for n in storage.listdir(folder) if n.isdigit() and storage.isdir(storage.join(folder, n))]
             if storage.isdir(folder) else [])
    return max(steps) if steps else None


def discard_failed_start(workdir: str | Path) -> list[str]:
    """After a start that trained nothing (no checkpoint), remove what it wrote so the corrected command is not
    refused as "a different config": config.json, telemetry, summary.json and the empty checkpoints folder.
    A workdir holding a checkpoint is left alone. Returns the names removed."""
    if not storage.isdir(workdir) or last_checkpoint(workdir) is not None:
        return []
    removed = []
    telemetry_names = map(storage.basename, storage.glob(storage.join(workdir, "telemetry*.jsonl")))
    names = ["config.json", "summary.json", *telemetry_names]
    for path in [storage.join(workdir, n) for n in names]:
        if storage.isfile(path):
            storage.remove(path)
            removed.append(storage.basename(path))
    if storage.isdir(storage.join(workdir, "checkpoints")):
        storage.rmtree(storage.join(workdir, "checkpoints"))
        removed.append("checkpoints/")
    return removed


def interrupted_line(command: str, workdir: str | Path, resume: str) -> str:
    """The one line printed on Ctrl-C: the checkpoint kept (or that none was), and how to resume."""
    step = last_checkpoint(workdir)
    if step is None:
        discard_failed_start(workdir)
        return f"labkit {command}: interrupted before the first checkpoint; nothing kept. Start again with: {resume}"
    return (f"labkit {command}: interrupted; checkpoint kept: step {step} in {storage.join(workdir, 'checkpoints')}. "
            f"Resume with: {resume}")


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


def _check_parameters(notebook: Path, keys) -> None:
    """Every key must be a parameter of the notebook's ``parameters`` cell: fail before any work."""
    import papermill as pm
    if not notebook.is_file():
        raise FileNotFoundError(f"labkit run: notebook {str(notebook)!r} does not exist (labkit run executes a "
                                "notebook of a labkit checkout, by default its notebooks/04_train.ipynb: run it from a "
                                "git clone, or pass the notebook's path)")
    allowed = list(pm.inspect_notebook(str(notebook)))
    unknown = sorted(set(keys) - set(allowed) - {"workdir"})
    if unknown:
        raise ValueError(f"unknown notebook parameter(s) {unknown} for {notebook.name}; allowed: "
                         f"{sorted(set(allowed) - {'workdir'})}" if allowed else
                         f"{notebook.name} has no cell tagged 'parameters', so it takes no -p/--sweep; got {unknown}")


class _Progress:
    """Prints training progress from the run's telemetry while the notebook executes (a thread tailing the
    file papermill's kernel writes): about ten step lines per run, and every evaluation."""

    def __init__(self, run_dir: Path, out=None, period_s: float = 1.0):
        from labkit import telemetry
        self.follower = telemetry.JsonlFollower(storage.join(run_dir, "telemetry.jsonl"))
        self.out, self.period_s = out or sys.stdout, period_s
        self.total, self.next_step = None, 0
        self.cells, self.started = "?", 0  # code cells of the executed notebook, and those started
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)
        self._print_new()

    def _loop(self) -> None:
        while not self.stop.wait(self.period_s):
            self._print_new()

    def _print_new(self) -> None:
        for e in self.follower.poll():
            kind = e.get("kind")
            if kind == "run" and e.get("phase") != "end":
                self.total = e.get("total_steps")
                start = e.get("resumed_from") or 0
                self.next_step = start
                self._say(f"  training: {e.get('model')} on {e.get('dataset')}, {self.total} steps"
                          + (f", resumed at step {start}" if start else ""))
            elif kind == "step" and isinstance(e.get("step"), int) and e["step"] >= self.next_step:
                every = max(1, (self.total or 10) // 10)
                self.next_step = (e["step"] // every + 1) * every
                loss = e.get("loss")
                self._say(f"  step {e['step']}/{self.total or '?'}"
                          + (f"  loss {loss:.4f}" if isinstance(loss, (int, float)) else ""))
            elif kind == "eval" and isinstance(e.get("top1"), (int, float)):
                self._say(f"  eval at step {e.get('step')}: top-1 {e['top1']:.4f}")

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def on_cell_start(self, cell, cell_index: int, **_kw) -> None:
        """papermill's per-cell hook: a line per code cell, so setup cells are not two silent minutes."""
        if cell.get("cell_type") == "code":
            self.started += 1
            self._say(f"  cell {self.started}/{self.cells}")


@contextlib.contextmanager
def _quiet_stderr(log_path: Path):
    """Send file descriptor 2 (the kernel's and TensorFlow's C++ messages, jupyter warnings) to ``log_path``
    (a gs:// log is written locally first and uploaded at the end: a file descriptor needs a local file)."""
    sys.stderr.flush()
    saved = os.dup(2)
    local = log_path
    if storage.is_url(log_path):
        local = os.path.join(tempfile.mkdtemp(prefix="labkit-run-"), "kernel.log")
    with open(local, "ab") as log, contextlib.ExitStack() as upload:
        if local != log_path:
            upload.callback(lambda: storage.write_bytes(log_path, Path(local).read_bytes()))
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def run_notebook(notebook: str | Path, parameters: dict, name: str, runs_dir: str | Path = "runs",
                 kernel: str = "python3", progress: bool = True) -> dict:
    """Execute ``notebook`` with ``parameters`` (plus ``workdir=runs_dir/name``); returns its index row.

    A run directory whose run already finished is left untouched (row status ``finished``, nothing executed).
    A failed start that trained nothing keeps only the executed notebook (with the error). Kernel and
    TensorFlow messages go to ``kernel.log`` in the run directory.
    """
    import papermill as pm
    notebook, run_dir = Path(notebook), storage.join(runs_dir, name)  # runs_dir: local or gs://
    _check_parameters(notebook, parameters)
    row = {"name": name, "notebook": str(notebook), "parameters": json.dumps(parameters, sort_keys=True),
           "run_dir": str(run_dir), "status": "ok", "error": ""}
    done = finished_summary(run_dir)
    if done is not None:
        row.update({k: done.get(k) for k in _SUMMARY_FIELDS}, status="finished")
        return row
    storage.makedirs(run_dir)
    params = dict(parameters, workdir=storage.absolute(run_dir))
    # absolute: papermill chdirs to the notebook's folder while it executes, and the progress thread reads then
    tracker = _Progress(storage.absolute(run_dir)) if progress else contextlib.nullcontext()
    if progress:
        import nbformat
        cells = nbformat.read(str(notebook), as_version=4).cells
        tracker.cells = sum(c.cell_type == "code" for c in cells) + 1  # + papermill's injected-parameters cell
    executed = storage.join(run_dir, notebook.name)
    # papermill writes gs:// through gcsfs, not a labkit dependency: a gs:// run's notebook is written locally,
    # then uploaded through labkit.storage.
    local = executed if not storage.is_url(executed) else os.path.join(tempfile.mkdtemp(prefix="labkit-run-"),
                                                                       notebook.name)
    try:
        with _quiet_stderr(storage.join(run_dir, "kernel.log")), tracker:
            hooks = {"on_cell_start": tracker.on_cell_start} if progress else {}
            pm.execute_notebook(str(notebook), local, parameters=params,
                                kernel_name=kernel, progress_bar=False, cwd=str(notebook.parent), **hooks)
    except pm.PapermillExecutionError as e:  # the notebook's own error: labkit's message is in evalue
        row.update(status="failed", error=f"{e.ename}: {e.evalue}")
        discard_failed_start(run_dir)
    finally:
        if local != executed and os.path.exists(local):
            storage.write_bytes(executed, Path(local).read_bytes())
    summary_file = storage.join(run_dir, "summary.json")
    if storage.isfile(summary_file):
        summary = json.loads(storage.read_text(summary_file))
        row.update({k: summary.get(k) for k in _SUMMARY_FIELDS})
    row["finished_at"] = datetime.datetime.now().isoformat(timespec="seconds")
    _append_index(storage.join(runs_dir, "index.csv"), row)
    return row


_SUMMARY_FIELDS = ("top1", "best_top1", "time_to_accuracy_s", "images_per_s", "steps", "wall_time_s", "simulated")


def _append_index(path: str, row: dict) -> None:
    new = not storage.exists(path)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=INDEX_COLUMNS, extrasaction="ignore")
    if new:
        writer.writeheader()
    writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in INDEX_COLUMNS})
    with storage.open_append(path) as f:  # local: append; gs://: the new row composed onto the object
        f.write(text.getvalue().encode("utf-8"))


def _index_counts(path: str) -> tuple[int, int]:
    """(runs, failed runs) in the whole index."""
    try:
        rows = list(csv.DictReader(io.StringIO(storage.read_text(path), newline="")))
    except OSError:
        return 0, 0
    return len(rows), sum(r.get("status") not in ("ok", "") for r in rows)


def add_arguments(parser) -> None:
    parser.add_argument("notebook", nargs="?", default=str(DEFAULT_NOTEBOOK),
                        help="the notebook to execute (default: notebooks/04_train.ipynb, the full training run)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="a parameter of the notebook's 'parameters' cell, e.g. -p bn_group 8 -p allreduce "
                             "torus2d (repeatable; an unknown KEY fails before anything runs)")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                        help="run once per value (several --sweep: every combination)")
    parser.add_argument("--name", default=None,
                        help="run name: the run directory is RUNS_DIR/NAME (default: notebook name + time); "
                             "the same name resumes an unfinished run and leaves a finished one untouched")
    parser.add_argument("--runs-dir", default="runs", help="where run directories and index.csv go (default runs)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel to execute with (default python3)")


def run(args) -> int:
    base = {k: _typed(v) for k, v in args.parameter}
    points = _sweep_points(args.sweep)
    _check_parameters(Path(args.notebook), {**base, **points[0]})  # fail before any work
    stem = args.name or Path(default_workdir(Path(args.notebook).stem)).name
    failed = ran = 0
    for point in points:
        name = stem + "".join(f"-{k}={v}" for k, v in point.items())
        print(f"labkit run: {name}: {args.notebook} with {json.dumps({**base, **point}, sort_keys=True)}",
              flush=True)
        try:
            row = run_notebook(args.notebook, {**base, **point}, name, args.runs_dir, args.kernel)
        except KeyboardInterrupt:
            resume = " ".join(["labkit", "run", *_argv_with_name(args, stem)])
            print(interrupted_line("run", storage.join(args.runs_dir, name), resume), file=sys.stderr)
            return 130
        failed += row["status"] == "failed"
        ran += row["status"] != "finished"
        _print_row(row, Path(args.notebook).name)
    total, total_failed = _index_counts(storage.join(args.runs_dir, "index.csv"))
    print(f"index: {storage.join(args.runs_dir, 'index.csv')} ({total} run(s), {total_failed} failed; "
          f"this command: {ran} run, {failed} failed)")
    return 1 if failed else 0


def _argv_with_name(args, stem: str) -> list[str]:
    """This command's arguments, with ``--name`` fixed so that re-running it resumes the same run."""
    argv = list(sys.argv[2:]) if len(sys.argv) > 1 and sys.argv[1] == "run" else []
    return argv if args.name else [*argv, "--name", stem]


def _print_row(row: dict, notebook_name: str) -> None:
    run_dir = row["run_dir"]
    if row["status"] == "failed":
        print(f"  FAILED: {row['error']}\n  executed notebook (with the error): {storage.join(run_dir, notebook_name)}",
              file=sys.stderr)
        return
    fmt = lambda v, f: "n/a" if v in (None, "") else format(v, f)  # noqa: E731
    sim = " (simulated CPU devices: not a hardware number)" if row.get("simulated") else ""
    if row["status"] == "finished":
        print(f"  already finished: {run_dir} is left untouched (top-1 {fmt(row.get('top1'), '.4f')}); "
              "use another --name to run it again")
        return
    tta = row.get("time_to_accuracy_s")
    tta = f"time to accuracy {tta:.1f} s wall" if isinstance(tta, (int, float)) else "target accuracy not reached"
    print(f"  top-1 {fmt(row.get('top1'), '.4f')}; {tta}; {fmt(row.get('images_per_s'), ',.0f')} images/s "
          f"steady{sim}")
    print(f"  run directory: {run_dir}  (executed notebook, telemetry.jsonl, summary.json; kernel messages: "
          "kernel.log)")
    if storage.isfile(storage.join(run_dir, "dashboard.html")):
        print(f"  dashboard: {storage.join(run_dir, 'dashboard.html')} (static), or live: labkit dashboard {run_dir}")
