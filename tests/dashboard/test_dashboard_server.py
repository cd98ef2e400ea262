"""The dashboard served in-process: a Bokeh client session attached, a writer appending, the data sources grow."""
import threading
import time

from bokeh.client import pull_session

from tests.dashboard.conftest import wait_until
from tests.dashboard.dashboard_events import emit_bench, emit_run_start, emit_steps
from labkit import telemetry
from labkit.dashboard import MemorySource, RunDirSource, overview


def test_served_overview_tails_a_run_directory_written_by_another_writer(tmp_path, serve):
    run = tmp_path / "run"  # does not exist yet: the page says so and waits
    pages = []

    def app():
        pages.append(overview(RunDirSource(run), period_ms=100))
        return pages[-1]

    url = serve(app)
    with pull_session(url=url) as session:
        page = wait_until(lambda: pages and pages[-1], message="a session")
        assert session.document.roots  # the client holds the page
        assert "does not exist" in page.feed.status.object
        writer = telemetry.EventStream(run, host=0)
        emit_run_start(writer)
        emit_bench(writer)
        emit_steps(writer, 0, 10)
        writer.flush()
        training, bn = page.views["training"].steps.source, page.views["bn"].heat
        collectives = page.views["collectives"]
        wait_until(lambda: len(collectives.train.get("torus_2d", ()) or ()) == 10,
                   message="10 steps of every view (collectives is updated last) on the server side")
        assert len(training.data["step"]) == 10 and len(bn.data["value"]) == 3 * 8
        assert len(collectives.points.data["bytes"]) > 0
        # The server's poll renders the status line after it updates the views, so wait for it too: reading it
        # the moment the views are full raced that poll (CI at stop 23 saw the old line).
        wait_until(lambda: "does not exist" not in page.feed.status.object,
                   message="the status line to stop saying the run directory does not exist")
        emit_steps(writer, 10, 25)
        writer.close()
        wait_until(lambda: len(collectives.train["torus_2d"]) == 25, message="25 steps on the server side")
        assert training.data["step"] == list(range(25))
        assert sorted(page.views["input"].hosts) == [0, 1]


def test_served_overview_follows_a_training_thread_in_this_process(serve):
    stream = telemetry.EventStream(host=0)
    pages = []

    def app():
        pages.append(overview(MemorySource(stream), period_ms=100))
        return pages[-1]

    url = serve(app)
    stop = threading.Event()

    def train():  # what a notebook's background training thread does: only emit
        emit_run_start(stream)
        for i in range(10_000):
            if stop.is_set():
                return
            emit_steps(stream, i, i + 1, hosts=1)
            time.sleep(0.01)

    trainer = threading.Thread(target=train, daemon=True)
    with pull_session(url=url):
        page = wait_until(lambda: pages and pages[-1], message="a session")
        trainer.start()
        try:
            source = page.views["training"].steps.source
            first = wait_until(lambda: len(source.data["step"]), message="first steps")
            wait_until(lambda: len(source.data["step"]) > first + 5, message="more steps while training runs")
        finally:
            stop.set()
            trainer.join(timeout=5)
    assert page.feed.reader.missed == 0 and page.feed.view_errors == 0
