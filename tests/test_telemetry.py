"""labkit.telemetry: round trip through the JSONL sink, ring-buffer cursors, torn lines, live following."""
import json
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from labkit import telemetry
from labkit.telemetry import EventStream, JsonlFollower, read_events


def test_round_trip_through_jsonl(tmp_path):
    stream = EventStream(tmp_path, host=0)
    sent = [stream.emit("step", step=i, loss=np.float32(1.0 / (i + 1)), images_per_s=jnp.asarray(10.0 * i),
                        hist=np.arange(3)) for i in range(5)]
    sent.append(stream.emit("run", phase="end", note="done"))
    stream.close()
    got, skipped = read_events(tmp_path)
    assert skipped == 0 and len(got) == 6
    for s, g in zip(sent, got):
        assert g["kind"] == s["kind"] and g["step"] == s["step"] and g["seq"] == s["seq"] and g["host"] == 0
        assert g["time"] == pytest.approx(s["time"])
    assert [g["loss"] for g in got[:5]] == pytest.approx([1.0, 0.5, 1 / 3, 0.25, 0.2])
    assert [g["images_per_s"] for g in got[:5]] == pytest.approx([0, 10, 20, 30, 40])
    assert got[0]["hist"] == [0, 1, 2] and got[5]["note"] == "done"


def test_file_per_host(tmp_path):
    for host in (0, 1):
        s = EventStream(tmp_path, host=host)
        s.emit("eval", step=1, top1=0.5)
        s.close()
    assert [p.name for p in telemetry.telemetry_files(tmp_path)] == ["telemetry.host1.jsonl", "telemetry.jsonl"]
    events, _ = read_events(tmp_path)
    assert sorted(e["host"] for e in events) == [0, 1]


def test_since_cursor_and_ring_overflow():
    stream = EventStream(capacity=4, host=0)
    assert stream.since(0) == ([], 0, 0)
    for i in range(3):
        stream.emit("step", step=i)
    events, cursor, missed = stream.since(0)
    assert [e["step"] for e in events] == [0, 1, 2] and cursor == 3 and missed == 0
    for i in range(3, 9):
        stream.emit("step", step=i)
    events, cursor, missed = stream.since(cursor)  # 6 new, ring holds the last 4
    assert [e["step"] for e in events] == [5, 6, 7, 8] and cursor == 9 and missed == 2
    assert stream.since(cursor) == ([], 9, 0)
    assert [e["step"] for e in stream.events("step")] == [5, 6, 7, 8]


def test_unknown_kind_is_an_error_listing_kinds():
    with pytest.raises(ValueError, match=r"unknown kind 'setp'; allowed: \['bn_stats', 'collective'"):
        EventStream(host=0).emit("setp", step=1)


def test_module_level_emit_uses_current_stream(tmp_path):
    stream = telemetry.open_run(tmp_path, host=0)
    try:
        telemetry.emit("input_queue", step=3, depth=2)
        assert telemetry.current() is stream and stream.events()[-1]["depth"] == 2
    finally:
        stream.close()
        telemetry.use(EventStream())
    assert read_events(tmp_path)[0][0]["depth"] == 2


def test_follower_keeps_torn_line_until_complete(tmp_path):
    path = tmp_path / "telemetry.jsonl"
    line = lambda i: json.dumps({"kind": "step", "step": i})  # noqa: E731
    path.write_text(line(0) + "\n" + line(1)[:9])
    follower = JsonlFollower(path)
    assert [e["step"] for e in follower.poll()] == [0]
    with open(path, "a") as f:
        f.write(line(1)[9:] + "\nnot json\n" + json.dumps([1, 2]) + "\n" + line(2) + "\n")
    assert [e["step"] for e in follower.poll()] == [1, 2]
    assert follower.skipped == 2  # the invalid line and the non-event
    assert read_events(path)[1] == 2


def test_missing_file_yields_nothing(tmp_path):
    follower = JsonlFollower(tmp_path / "nope" / "telemetry.jsonl")
    assert follower.poll() == [] and follower.skipped == 0


def test_new_writer_closes_a_torn_line_left_by_a_killed_one(tmp_path):
    path = tmp_path / "telemetry.jsonl"
    path.write_text(json.dumps({"kind": "step", "step": 0}) + "\n" + '{"kind": "st')
    stream = EventStream(tmp_path, host=0)
    stream.emit("step", step=1)
    stream.close()
    events, skipped = read_events(path)
    assert [e["step"] for e in events] == [0, 1] and skipped == 1


_WRITER = """
import sys, time
from labkit.telemetry import EventStream
s = EventStream(sys.argv[1], host=0)
for i in range(40):
    s.emit("step", step=i, loss=1.0 / (i + 1))
    s.flush()
    time.sleep(0.01)
s.close()
"""


def test_follow_a_file_written_live_by_another_process(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)])
    follower = JsonlFollower(tmp_path / "telemetry.jsonl")
    seen, polls = [], 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(seen) < 40:
        batch = follower.poll()
        polls += bool(batch)
        seen.extend(batch)
        time.sleep(0.005)
    proc.wait(timeout=30)
    assert [e["step"] for e in seen] == list(range(40)) and follower.skipped == 0
    assert polls > 1  # it really arrived in pieces while the writer ran
