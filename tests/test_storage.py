"""labkit.storage on local paths and on gs:// (a Cloud Storage emulator on 127.0.0.1, started by the fixture),
and what goes through it: telemetry files, the run-directory dashboard source, TFRecord shards."""
import itertools
import json
import sys
import uuid

import pytest

from labkit import storage, telemetry
from tests.gcs_emulator import BUCKET, gcs  # noqa: F401 - the fixture

_ids = itertools.count()


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
    """A fresh directory: a local one, or a unique prefix in the emulator's bucket."""
    if request.param == "local":
        return str(tmp_path)
    request.getfixturevalue("gcs")
    return f"gs://{BUCKET}/storage-{uuid.uuid4().hex[:8]}-{next(_ids)}"


def test_url_paths_stay_urls():
    # Path("gs://b/run") would be "gs:/b/run": these must keep the URL (no emulator needed).
    assert storage.is_url("gs://b/run") and not storage.is_url("/tmp/run") and not storage.is_url("runs/x")
    assert storage.join("gs://b/run", "checkpoints", "3") == "gs://b/run/checkpoints/3"
    assert storage.join("gs://b/run/", "x") == "gs://b/run/x"
    assert storage.basename("gs://b/run/telemetry.jsonl") == "telemetry.jsonl"
    assert storage.basename("gs://b/run/checkpoints/") == "checkpoints"
    assert storage.dirname("gs://b/run/train-00000-of-00001") == "gs://b/run"
    assert storage.absolute("gs://b/run") == "gs://b/run"
    assert storage.absolute("runs/x").startswith("/") and storage.absolute("runs/x").endswith("/runs/x")


def test_read_write_list_remove(root):
    d = storage.join(root, "run")
    assert not storage.exists(d)
    storage.makedirs(storage.join(d, "checkpoints"))
    storage.write_text(storage.join(d, "config.json"), '{"a": 1}')
    storage.write_bytes(storage.join(d, "telemetry.jsonl"), b"x\n")
    storage.write_bytes(storage.join(d, "telemetry.host1.jsonl"), b"yy\n")
    assert json.loads(storage.read_text(storage.join(d, "config.json"))) == {"a": 1}
    assert storage.read_bytes(storage.join(d, "telemetry.host1.jsonl")) == b"yy\n"
    assert storage.size(storage.join(d, "telemetry.host1.jsonl")) == 3
    assert storage.isdir(d) and storage.isfile(storage.join(d, "config.json"))
    assert not storage.isfile(d) and not storage.isdir(storage.join(d, "config.json"))
    assert storage.listdir(d) == ["checkpoints", "config.json", "telemetry.host1.jsonl", "telemetry.jsonl"]
    assert storage.glob(storage.join(d, "telemetry*.jsonl")) == [storage.join(d, "telemetry.host1.jsonl"),
                                                                 storage.join(d, "telemetry.jsonl")]
    storage.write_text(storage.join(d, "config.json"), "{}")  # a rewrite replaces the whole file
    assert storage.read_text(storage.join(d, "config.json")) == "{}"
    storage.remove(storage.join(d, "config.json"))
    assert not storage.exists(storage.join(d, "config.json"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        storage.read_text(storage.join(d, "config.json"))
    with pytest.raises(FileNotFoundError):
        storage.remove(storage.join(d, "config.json"))
    storage.rmtree(d)
    assert not storage.exists(storage.join(d, "telemetry.jsonl")) and storage.glob(storage.join(d, "*")) == []
    storage.rmtree(d)  # no error when already gone


def test_read_range(root):
    path = storage.join(root, "f.bin")
    storage.makedirs(root)
    storage.write_bytes(path, bytes(range(100)))
    assert storage.read_range(path, 0) == (100, bytes(range(100)))
    assert storage.read_range(path, 90, 5) == (100, bytes(range(90, 95)))
    assert storage.read_range(path, 100) == (100, b"") and storage.read_range(path, 150) == (100, b"")
    with pytest.raises(FileNotFoundError):
        storage.read_range(storage.join(root, "missing"), 0)


def test_append_keeps_what_was_there(root):
    path = storage.join(root, "log.jsonl")
    storage.makedirs(root)
    with storage.open_append(path) as f:
        f.write(b"a\n")
    with storage.open_append(path) as f:  # a second writer (a resumed run) appends after the first
        assert f.tell() == 2
        f.write(b"b\n")
        f.write(b"c\n")
    assert storage.read_bytes(path) == b"a\nb\nc\n"


def test_object_append_is_buffered_until_its_interval(gcs):
    path = f"gs://{BUCKET}/append-{uuid.uuid4().hex[:8]}/log"
    f = storage.open_append(path, interval_s=3600)
    f.write(b"one\n")
    f.flush()  # the first upload goes out at once
    assert storage.read_bytes(path) == b"one\n"
    f.write(b"two\n")
    f.flush()  # within the interval: buffered, the object unchanged
    assert storage.read_bytes(path) == b"one\n" and f.pending
    f.flush(force=True)
    assert storage.read_bytes(path) == b"one\ntwo\n" and not f.pending
    f.write(b"three\n")
    f.close()  # close always uploads
    assert storage.read_bytes(path) == b"one\ntwo\nthree\n"


def test_telemetry_upload_on_gs_is_linear_in_run_length(gcs):
    """40 flushes of one same-sized event each: every flush uploads that event's bytes plus a fixed overhead (the
    temporary object's headers, the compose request), as measured by the emulator's count of request-body bytes.
    A whole-object rewrite per flush would upload 1 + 2 + ... + 40 events' bytes: 20.5 times the run's size."""
    run_dir = f"gs://{BUCKET}/linear-{uuid.uuid4().hex[:8]}"
    stream = telemetry.EventStream(run_dir, host=0)
    stream.emit("run", step=0, phase="start")
    stream.flush()  # the object exists: every later flush appends
    path = storage.join(run_dir, "telemetry.jsonl")
    sent, sizes = [], [storage.read_range(path, 0)[0]]
    for step in range(40):
        before = gcs.received
        stream.emit("step", step=1000 + step, loss=0.5, note="x" * 1000)
        stream.flush()
        sent.append(gcs.received - before)
        sizes.append(storage.read_range(path, 0)[0])
    stream.close()
    added = [b - a for a, b in zip(sizes, sizes[1:])]  # the bytes each flush added to the object (one event)
    assert all(1000 < a < 1200 for a in added), added
    overheads = [s - a for s, a in zip(sent, added)]
    assert all(0 <= o < 1024 for o in overheads), overheads  # the new bytes, plus a constant
    assert max(sent[-10:]) <= min(sent[:10]) + 64, sent  # the 40th flush costs what the 1st did
    rewrite = sum(sizes[1:])  # what rewriting the whole object at every flush would upload
    assert sum(sent) <= sizes[-1] + 40 * 1024 < rewrite / 10, (sum(sent), rewrite)
    events, skipped = telemetry.read_events(run_dir)
    assert [e["step"] for e in events] == [0] + list(range(1000, 1040)) and skipped == 0
    assert storage.listdir(run_dir) == ["telemetry.jsonl"]  # no temporary object left behind


def test_url_without_tensorflow_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow -> ImportError
    with pytest.raises(ImportError, match="pip install tensorflow-cpu"):
        storage.exists("gs://bucket/x")
    assert storage.exists("/") is True  # local paths never need it


def test_telemetry_on_gs_written_followed_and_read(gcs):
    run_dir = f"gs://{BUCKET}/telemetry-{uuid.uuid4().hex[:8]}"
    stream = telemetry.EventStream(run_dir, host=0)
    follower = telemetry.JsonlFollower(storage.join(run_dir, "telemetry.jsonl"))
    assert follower.poll() == []  # no file yet: nothing, no error
    for step in range(3):
        stream.emit("step", step=step, loss=1.0 / (step + 1))
    stream.flush()  # an object store: flush uploads now
    assert [e["step"] for e in follower.poll()] == [0, 1, 2]
    stream.emit("eval", step=3, top1=0.5, top5=0.9, count=10, eval_time_s=0.1)
    stream.close()
    assert [e["kind"] for e in follower.poll()] == ["eval"]  # only the new event: the follower kept its offset
    # A resumed run (another process) appends to the same object.
    again = telemetry.EventStream(run_dir, host=0)
    again.emit("step", step=4, loss=0.1)
    again.close()
    events, skipped = telemetry.read_events(run_dir)
    assert [(e["kind"], e["step"]) for e in events] == [("step", 0), ("step", 1), ("step", 2), ("eval", 3),
                                                        ("step", 4)] and skipped == 0
    assert telemetry.telemetry_files(run_dir) == [storage.join(run_dir, "telemetry.jsonl")]


def test_follower_tolerates_a_torn_line_in_an_object(gcs):
    path = f"gs://{BUCKET}/torn-{uuid.uuid4().hex[:8]}/telemetry.jsonl"
    good = json.dumps({"kind": "step", "step": 0}) + "\n"
    storage.write_text(path, good + '{"kind": "step", "st')
    follower = telemetry.JsonlFollower(path)
    assert [e["step"] for e in follower.poll()] == [0] and follower.skipped == 0
    storage.write_text(path, good + '{"kind": "step", "step": 1}\nnot json\n')
    assert [e["step"] for e in follower.poll()] == [1] and follower.skipped == 1


def test_dashboard_run_dir_source_on_gs(gcs):
    from labkit.dashboard.sources import RunDirSource, as_source
    run_dir = f"gs://{BUCKET}/dash-{uuid.uuid4().hex[:8]}"
    source = as_source(run_dir)
    assert isinstance(source, RunDirSource) and source.label == run_dir  # not collapsed to gs:/
    reader = source.open()
    assert reader.poll() == [] and "does not exist" in reader.status
    for host in (0, 1):
        stream = telemetry.EventStream(run_dir, host=host)
        stream.emit("step", step=host, loss=1.0)
        stream.close()
    events = reader.poll()
    assert sorted((e["host"], e["step"]) for e in events) == [(0, 0), (1, 1)] and reader.status == ""


def test_labkit_dashboard_save_reads_a_gs_run_dir(gcs, tmp_path, capsys):
    from labkit.cli import main
    run_dir = f"gs://{BUCKET}/cli-{uuid.uuid4().hex[:8]}"
    assert main(["dashboard", run_dir, "--save", str(tmp_path / "x.html")]) == 2  # nothing there yet
    assert f"run directory {run_dir!r} does not exist" in capsys.readouterr().err
    stream = telemetry.EventStream(run_dir, host=0)
    for step in range(3):
        stream.emit("step", step=step, loss=2.0 - step, accuracy=0.1, lr=0.1, images_per_s=100.0,
                    step_time_s=0.1, input_wait_s=0.0, compile=step == 0)
    stream.close()
    out = tmp_path / "dashboard.html"
    assert main(["dashboard", run_dir, "--save", str(out)]) == 0
    assert f"labkit dashboard: {run_dir}" in out.read_text(encoding="utf-8")  # the URL, not collapsed to gs:/


def test_tfrecord_shards_on_gs_listed_counted_and_read(gcs):
    from labkit.data import tfrecords
    from labkit.data.pipeline import resolve_files
    data_dir = f"gs://{BUCKET}/data-{uuid.uuid4().hex[:8]}"
    records = [tfrecords.encode_example(b"jpeg%d" % i, i % 3, height=1, width=1) for i in range(7)]
    counts = tfrecords.write_shards(data_dir, "train", records, 2, num_classes=3)
    files = tfrecords.list_files(data_dir, "train")
    assert files == [storage.join(data_dir, n) for n in ("train-00000-of-00002", "train-00001-of-00002")]
    assert counts == {"train-00000-of-00002": 4, "train-00001-of-00002": 3}
    assert tfrecords.read_info(data_dir) == {"num_classes": 3, "records": counts}
    assert tfrecords.count_records(files) == [4, 3]
    assert resolve_files(data_dir, "train")[1]["num_classes"] == 3
    read = tfrecords.read_examples(files)  # tf.data reads gs:// itself (through the emulator's TLS front)
    assert sorted(r["image/encoded"] for r in read) == sorted(b"jpeg%d" % i for i in range(7))
    with pytest.raises(FileNotFoundError, match="no TFRecord files match"):
        tfrecords.list_files(data_dir, "validation")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tfrecords.list_files(data_dir + "-missing", "train")


def test_gs_read_without_credentials_falls_back_to_anonymous(gcs, monkeypatch, caplog, tmp_path):
    """A laptop with no Google credentials still reads a public gs:// object, and is told how to log in.

    No credentials is modelled as google-auth documents it: ``google.auth.default()`` raises
    ``DefaultCredentialsError`` when GOOGLE_APPLICATION_CREDENTIALS names no file and no gcloud ADC or metadata
    server exists (https://googleapis.dev/python/google-auth/latest/reference/google.auth.html#google.auth.default).
    Without STORAGE_EMULATOR_HOST the client talks to storage.googleapis.com itself; the fixture's TLS front
    answers for that host, so the request really leaves the client as it would for a user."""
    import google.auth.credentials

    path = f"gs://{BUCKET}/public-{uuid.uuid4().hex[:8]}/labels.txt"
    storage.write_bytes(path, b"cat\ndog\n")  # written by the emulator-authorised client (the publisher)
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    monkeypatch.delenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/adc.json")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", gcs.env["CURL_CA_BUNDLE"])
    monkeypatch.setattr(storage, "_CLIENTS", {})
    monkeypatch.setattr(storage, "_ANON_SINCE", {})
    monkeypatch.setattr(storage, "_WARNED", [])
    with caplog.at_level("WARNING", logger="labkit.storage"):
        assert storage.read_bytes(path) == b"cat\ndog\n"
    client = storage._gcs_client()
    assert isinstance(client._credentials, google.auth.credentials.AnonymousCredentials)
    assert "gcloud auth application-default login" in caplog.text
    # The user logs in (what `gcloud auth application-default login` writes: an authorized_user ADC file, per
    # google-auth's _default.py); the anonymous client looks again after _ANON_RETRY_S and picks it up.
    adc = tmp_path / "adc.json"
    adc.write_text(json.dumps({"type": "authorized_user", "client_id": "id", "client_secret": "s",
                               "refresh_token": "r"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    assert storage._gcs_client() is client  # within the retry interval: the same client
    monkeypatch.setattr(storage, "_ANON_RETRY_S", 0.0)
    logged_in = storage._gcs_client()
    assert not isinstance(logged_in._credentials, google.auth.credentials.AnonymousCredentials)
