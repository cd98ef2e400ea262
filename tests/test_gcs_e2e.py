"""End to end on gs://: data and workdir in a Cloud Storage emulator on 127.0.0.1 (started by the fixture).

A training process reads TFRecords from gs:// (tf.data through TensorFlow's own GCS filesystem), checkpoints
there (Orbax: etils for metadata, tensorstore for arrays) and writes config.json and telemetry there; it is
killed after its first checkpoint, the run resumes from that checkpoint, and the dashboard's run-directory
source reads the whole run back from gs://.
"""
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from labkit import storage
from labkit.config import Config
from tests.gcs_emulator import BUCKET, gcs  # noqa: F401 - the fixture

_WORKER = """
import json, sys
from labkit.config import Config
from labkit.train.loop import train_and_evaluate
train_and_evaluate(Config.from_dict(json.loads(sys.argv[1])), sys.argv[2], log=None)
"""


def _upload_digits(data_dir: str) -> int:
    """Two train shards and one validation shard of the bundled digits, copied to ``data_dir``; train size."""
    from labkit.data import bundled
    local = bundled.prepare("digits")
    info = json.loads((local / "labkit-info.json").read_text())
    names = ["train-00000-of-00008", "train-00001-of-00008", "validation-00000-of-00002"]
    for name in names:
        storage.write_bytes(storage.join(data_dir, name), (local / name).read_bytes())
    records = {n: info["records"][n] for n in names}
    storage.write_text(storage.join(data_dir, "labkit-info.json"),
                       json.dumps({**info, "records": records}))
    return records[names[0]] + records[names[1]]


@pytest.mark.slow
def test_train_kill_resume_and_dashboard_on_gs(gcs):  # noqa: F811
    root = f"gs://{BUCKET}/e2e-{uuid.uuid4().hex[:8]}"
    data_dir, workdir = storage.join(root, "data"), storage.join(root, "run")
    train_images = _upload_digits(data_dir)
    assert train_images == 375  # 375 // 64 = 5 steps an epoch
    config = Config(model="resnet_tiny", dataset="tfrecords", data_dir=data_dir, image_size=16, global_batch=64,
                    epochs=2, eval_every_epochs=2, warmup_epochs=0.2, target_accuracy=0.0, log_every_steps=1,
                    checkpoint_every_steps=3, bn_stats_every_steps=0, collective_every_steps=0, shape="2x4",
                    bn_group=2, allreduce="torus2d", deterministic=True)

    proc = subprocess.Popen([sys.executable, "-c", _WORKER, json.dumps(config.to_dict()), workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    committed = storage.join(workdir, "checkpoints", "3", "commit_success.txt")  # Orbax's marker on GCS
    deadline = time.monotonic() + 480  # generous: a loaded 2-core machine takes minutes to import and compile
    while not storage.exists(committed) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if proc.poll() is None:  # still training: kill it mid-run (if it already exited, say why below)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    err = proc.stderr.read().decode(errors="replace")[-3000:]
    assert proc.returncode == -signal.SIGKILL and storage.exists(committed), f"not killed mid-run:\n{err}"
    assert not storage.exists(storage.join(workdir, "summary.json"))  # the killed run did not finish
    assert json.loads(storage.read_text(storage.join(workdir, "config.json")))["data_dir"] == data_dir

    from labkit.train.loop import train_and_evaluate
    summary = train_and_evaluate(config, workdir, log=None)  # resumes here, in this process
    assert summary["steps"] == 10 and summary["stopped"] == "epochs" and summary["workdir"] == workdir
    assert json.loads(storage.read_text(storage.join(workdir, "summary.json")))["steps"] == 10

    from labkit.dashboard import RunDirSource
    reader = RunDirSource(workdir).open()
    events = []
    for _ in range(20):  # a run is read in chunks; stop when nothing new arrives
        new = reader.poll()
        if not new:
            break
        events += new
    starts = [i for i, e in enumerate(events) if e["kind"] == "run" and e.get("phase") == "start"]
    assert len(starts) == 2, [e["kind"] for e in events]  # the killed process and the resumed one
    resumed_from = events[starts[1]]["resumed_from"]
    assert resumed_from >= 3 and resumed_from % 3 == 0  # a checkpoint the killed run committed
    resumed = [e["step"] for e in events[starts[1]:] if e["kind"] == "step"]
    assert resumed == list(range(resumed_from, 10))
    killed = {e["step"]: e["loss"] for e in events[:starts[1]] if e["kind"] == "step"}
    again = {e["step"]: e["loss"] for e in events[starts[1]:] if e["kind"] == "step"}
    for step in set(killed) & set(again):  # steps both processes ran: deterministic input, same losses
        assert again[step] == pytest.approx(killed[step], rel=1e-6, abs=1e-7), step
    evals = [e for e in events if e["kind"] == "eval"]
    assert len(evals) == 1 and evals[0]["step"] == 10 and evals[0]["count"] == 150
    assert events[-1]["kind"] == "run" and events[-1]["phase"] == "end" and events[-1]["steps"] == 10
    assert reader.skipped == 0 and reader.status == ""


_RUN_CELL = """
import json
from labkit import storage, telemetry
stream = telemetry.EventStream(workdir, host=0)
stream.emit("step", step=0, loss=1.0)
stream.close()
storage.write_text(storage.join(workdir, "summary.json"),
                   json.dumps({"stopped": "epochs", "top1": top1, "steps": 1, "simulated": True}))
"""


@pytest.mark.slow
def test_labkit_run_into_a_gs_runs_dir(gcs, tmp_path):  # noqa: F811
    import nbformat
    from labkit.runs import run_notebook
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("workdir = None\ntop1 = 0.0")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(_RUN_CELL)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook = tmp_path / "tiny.ipynb"
    nbformat.write(nb, notebook)

    runs_dir = f"gs://{BUCKET}/runs-{uuid.uuid4().hex[:8]}"
    row = run_notebook(notebook, {"top1": 0.25}, "r1", runs_dir=runs_dir, progress=False)
    run_dir = storage.join(runs_dir, "r1")
    assert row["status"] == "ok" and row["top1"] == 0.25 and row["run_dir"] == run_dir, row
    assert storage.listdir(run_dir) == ["kernel.log", "summary.json", "telemetry.jsonl", "tiny.ipynb"]
    executed = nbformat.reads(storage.read_text(storage.join(run_dir, "tiny.ipynb")), as_version=4)
    assert "top1 = 0.25" in executed.cells[1].source  # papermill's injected parameters, uploaded
    assert run_notebook(notebook, {"top1": 0.25}, "r1", runs_dir=runs_dir)["status"] == "finished"
    import csv
    import io
    rows = list(csv.DictReader(io.StringIO(storage.read_text(storage.join(runs_dir, "index.csv")))))
    assert [(r["name"], r["status"], r["top1"]) for r in rows] == [("r1", "ok", "0.25")]
