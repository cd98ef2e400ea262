"""labkit.dashboard.sources and series: reading telemetry incrementally, counting what is skipped, downsampling."""
import json

import numpy as np
import pytest

from labkit import telemetry
from labkit.dashboard import MemorySource, RunDirSource
from labkit.dashboard.series import Series
from labkit.dashboard.sources import as_source


def _line(kind, step, **fields):
    return json.dumps({"kind": kind, "time": 1.0 + step, "step": step, "host": 0, "seq": step + 1, **fields}) + "\n"


def test_run_dir_reader_waits_then_tails_and_counts_torn_and_unknown(tmp_path):
    run = tmp_path / "run"
    reader = RunDirSource(run).open()
    assert reader.poll() == []
    assert "does not exist" in reader.status and str(run) in reader.status
    run.mkdir()
    assert reader.poll() == [] and "no telemetry" in reader.status
    path = run / "telemetry.jsonl"
    path.write_text(_line("step", 0, loss=1.0) + _line("mystery", 1) + "not json\n" + '{"kind": "step", "st')
    events = reader.poll()
    assert [e["step"] for e in events] == [0]
    assert reader.skipped == 1 and reader.unknown == 1 and reader.unknown_kinds == {"mystery": 1}
    assert reader.status == ""
    with open(path, "a") as f:  # the torn last line completes: it is an event after all
        f.write('ep": 2, "loss": 0.5, "time": 3.0}\n' + _line("step", 3, loss=0.25))
    assert [e["step"] for e in reader.poll()] == [2, 3]
    assert reader.seen == 3 and reader.skipped == 1
    summary = reader.summary()
    assert "3 events" in summary and "1 torn or invalid line skipped" in summary and "'mystery' x1" in summary


def test_run_dir_reader_picks_up_a_later_host_file_and_merges_by_time(tmp_path):
    (tmp_path / "telemetry.jsonl").write_text(_line("step", 0) + _line("step", 2))
    reader = RunDirSource(tmp_path).open()
    assert [e["step"] for e in reader.poll()] == [0, 2]
    with open(tmp_path / "telemetry.jsonl", "a") as f:
        f.write(_line("step", 5))
    (tmp_path / "telemetry.host1.jsonl").write_text(_line("input_queue", 4, host=1) + _line("input_queue", 6, host=1))
    assert [e["step"] for e in reader.poll()] == [4, 5, 6]


def test_two_readers_of_one_source_are_independent(tmp_path):
    stream = telemetry.EventStream(host=0)
    source = MemorySource(stream)
    a = source.open()
    for i in range(3):
        stream.emit("step", step=i, loss=float(i))
    b = source.open()
    assert [e["step"] for e in a.poll()] == [0, 1, 2]
    stream.emit("step", step=3, loss=3.0)
    assert [e["step"] for e in a.poll()] == [3]
    assert [e["step"] for e in b.poll()] == [0, 1, 2, 3]


def test_memory_reader_counts_events_that_rolled_out_of_the_ring():
    stream = telemetry.EventStream(capacity=4, host=0)
    reader = MemorySource(stream).open()
    assert reader.poll() == [] and "waiting" in reader.status
    for i in range(10):
        stream.emit("step", step=i)
    assert [e["step"] for e in reader.poll()] == [6, 7, 8, 9]
    assert reader.missed == 6 and "6 missed" in reader.summary()


def test_memory_source_without_a_stream_follows_the_process_wide_stream():
    fresh = telemetry.EventStream(host=0)
    previous = telemetry.use(fresh)
    try:
        reader = as_source(None).open()
        telemetry.emit("step", step=7)
        assert [e["step"] for e in reader.poll()] == [7]
    finally:
        telemetry.use(previous)


def test_as_source_rejects_other_things():
    assert isinstance(as_source("runs/x"), RunDirSource)
    with pytest.raises(TypeError, match="expected MemorySource, RunDirSource"):
        as_source(42)


def test_series_stays_bounded_and_keeps_the_mean_of_what_it_merges():
    series = Series(("step", "y"), max_points=8, last_columns=("step",))
    y = np.random.default_rng(0).normal(size=1000)
    for start in range(0, 1000, 37):  # uneven chunks, as polls deliver them
        chunk = range(start, min(start + 37, 1000))
        series.extend({"step": list(chunk), "y": [float(y[i]) for i in chunk]})
        assert len(series) <= 8 and len(series.source.data["y"]) == len(series)
    assert series.rows_in == 1000
    stride = series.stride
    assert stride == 128  # 1000 rows into <= 8 points: buckets double from 1 until 1000 / stride <= 8
    shown = series.data()
    full = len(shown["y"])
    assert full == 1000 // stride
    # Each point is the mean of `stride` consecutive rows and sits at the bucket's last step.
    np.testing.assert_allclose(shown["y"], y[:full * stride].reshape(full, stride).mean(axis=1), rtol=1e-9)
    assert shown["step"] == [stride * (k + 1) - 1 for k in range(full)]


def test_series_streams_while_small_and_ignores_nan_in_means():
    series = Series(("step", "y"), max_points=100, last_columns=("step",))
    series.extend({"step": [0, 1], "y": [1.0, float("nan")]})
    assert series.source.data["y"][0] == 1.0 and np.isnan(series.source.data["y"][1])
    with pytest.raises(ValueError, match="max_points"):
        Series(("a",), max_points=2)
