"""labkit.train.background: a run on a thread streams events live, stops on request, and resumes."""
import time

from labkit.train.background import BackgroundRun
from tests.train.test_loop import TINY


def test_background_run_streams_stops_and_resumes(tmp_path):
    run = BackgroundRun(TINY.replace(collective_every_steps=0), tmp_path).start()
    seen, cursor, deadline = [], 0, time.monotonic() + 300
    while time.monotonic() < deadline:  # the caller's thread is free while the run trains
        events, cursor, _ = run.stream.since(cursor)
        seen += [e for e in events if e["kind"] == "step"]
        if len(seen) >= 3:
            run.stop()
            break
        time.sleep(0.02)
    summary = run.wait(timeout=300)
    assert summary["stopped"] == "stopped" and 3 <= summary["steps"] < 20 and not run.running
    assert run.status == "finished"
    resumed = run.start().wait(timeout=300)  # picks up from its checkpoint
    assert resumed["stopped"] == "epochs" and resumed["steps"] == 20
    steps = [e["step"] for e in run.stream.events("step")]
    assert steps == list(range(20))  # no step lost or repeated across the stop
