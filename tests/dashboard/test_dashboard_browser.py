"""A real browser (Debian's Chromium via Playwright) watches the served dashboard update as events arrive."""
from tests.dashboard.conftest import ARTIFACTS, JS_COLUMN_LENGTHS
from tests.dashboard.dashboard_events import emit_bench, emit_run_start, emit_steps
from labkit import telemetry
from labkit.dashboard import RunDirSource, overview

# True once some ColumnDataSource column `column` in the page has at least `n` rows.
_JS_AT_LEAST = f"([column, n]) => ({JS_COLUMN_LENGTHS})(column).some(length => length >= n)"


def test_browser_sees_the_plots_update_as_a_writer_appends(tmp_path, serve, browser):
    run = tmp_path / "run"
    writer = telemetry.EventStream(run, host=0)
    emit_run_start(writer)
    emit_bench(writer)
    emit_steps(writer, 0, 20)
    writer.flush()
    url = serve(lambda: overview(RunDirSource(run), period_ms=200))

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_function(_JS_AT_LEAST, arg=["loss", 20], timeout=30_000)
    before = {c: max(page.evaluate(JS_COLUMN_LENGTHS, c)) for c in ("loss", "depth", "noise")}
    assert before == {"loss": 20, "depth": 20, "noise": 4}

    emit_steps(writer, 20, 60)  # the run goes on while the page is open
    writer.close()
    page.wait_for_function(_JS_AT_LEAST, arg=["loss", 60], timeout=30_000)
    page.wait_for_function(_JS_AT_LEAST, arg=["noise", 12], timeout=30_000)
    after = {c: max(page.evaluate(JS_COLUMN_LENGTHS, c)) for c in ("loss", "depth", "noise")}
    assert after == {"loss": 60, "depth": 60, "noise": 12}
    assert page.get_by_text("step 59", exact=False).count() >= 1  # the readout line followed too
    assert errors == []
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-live.png"), full_page=True)
    assert (ARTIFACTS / "dashboard-live.png").stat().st_size > 10_000
    page.close()
