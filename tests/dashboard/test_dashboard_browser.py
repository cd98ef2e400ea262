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
    # the readout line followed too; waited for like the plots, since its HTML reaches the DOM on its own render
    page.get_by_text("step 59", exact=False).first.wait_for(timeout=30_000)
    assert errors == []
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-live.png"), full_page=True)
    assert (ARTIFACTS / "dashboard-live.png").stat().st_size > 10_000
    page.close()


# The page's layout problems a reader sees: horizontal overflow, text needing an emoji font, its height.
_JS_LAYOUT = """() => {
  const root = document.documentElement;
  const text = [];
  const walk = (node) => {  // Panel renders into shadow roots: read their text too
    if (node.shadowRoot) walk(node.shadowRoot);
    for (const child of node.childNodes) {
      if (child.nodeType === 3) text.push(child.textContent); else walk(child);
    }
  };
  walk(document.body);
  const joined = text.join(" ");
  const emoji = [...joined].filter(c => /[\\u2300-\\u23ff\\u2600-\\u27bf\\u2b00-\\u2bff]|[\\u{1F000}-\\u{1FAFF}]/u.test(c));
  return {overflow: root.scrollWidth - root.clientWidth, height: root.scrollHeight, emoji: emoji,
          title: document.title, text: joined};
}"""


def _finished_run(run):
    from tests.dashboard.dashboard_events import emit_full_run
    writer = telemetry.EventStream(run, host=0)
    emit_full_run(writer, steps=40)
    writer.close()


def test_pages_fit_every_width_have_titles_and_need_no_emoji_font(tmp_path, serve, browser):
    from labkit.dashboard.serve import make_app, page_title
    run = tmp_path / "a-run-directory-with-a-rather-long-name-as-users-give-them"
    _finished_run(run)
    ARTIFACTS.mkdir(exist_ok=True)
    for view in ("overview", "bn"):  # the overview holds every plot; bn has the fixed-width torus
        url = serve(make_app(run, view=view, period_ms=300), title=page_title(run, view))
        for width in (420, 1600):
            page = browser.new_page(viewport={"width": width, "height": 900})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_function(_JS_AT_LEAST, arg=["step", 1], timeout=60_000)
            page.wait_for_timeout(1000)  # layout settles after the first poll
            layout = page.evaluate(_JS_LAYOUT)
            assert layout["overflow"] <= 0, (view, width, layout["overflow"])  # no horizontal scrollbar
            assert layout["emoji"] == [], (view, layout["emoji"])
            assert errors == []
            name = run.name
            assert layout["title"] == (f"labkit dashboard: {name}" if view == "overview" else f"labkit bn: {name}")
            heading = "labkit dashboard: " if view == "overview" else "labkit bn view: "
            assert heading + str(run) in layout["text"]
            if width == 1600:
                assert 800 < layout["height"] < (5000 if view == "overview" else 2000), (view, layout["height"])
            page.screenshot(path=str(ARTIFACTS / f"dashboard-{view}-{width}.png"), full_page=True)
            page.close()
