"""`labkit dashboard RUNDIR [--save]` and `panel serve dashboards/<app>.py --args RUNDIR`."""
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from bokeh.client import pull_session

from tests.dashboard.conftest import free_port, wait_until
from tests.dashboard.dashboard_events import ALGORITHMS, LAYERS, emit_full_run, loss_at
from labkit import cli, telemetry

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    writer = telemetry.EventStream(run, host=0)
    emit_full_run(writer, steps=40)
    writer.close()
    with open(run / "telemetry.jsonl", "a") as f:
        f.write('{"kind": "step", "step": 40, "lo')  # a writer killed mid-line
    return run


def test_save_writes_a_self_contained_snapshot_holding_the_data(run_dir, tmp_path, capsys):
    out = tmp_path / "snap.html"
    assert cli.main(["dashboard", str(run_dir), "--save", str(out)]) == 0
    assert "self-contained" in capsys.readouterr().out
    text = out.read_text()
    assert not re.search(r"<script[^>]+src=", text)  # Bokeh and Panel JavaScript are inlined
    assert not re.search(r'<link[^>]+href="https?:', text)  # so are the stylesheets
    assert not re.search(r'"url":"https?:', text)  # and the components' own (Panel links them from its CDN)
    for name in (*LAYERS, *ALGORITHMS, repr(loss_at(39))):
        assert name in text, name
    assert "1 torn or invalid line skipped" in text
    assert "static snapshot: the controls are disabled" in text  # no Python behind the page: said, not broken


def test_save_of_a_missing_or_empty_run_dir_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "empty.html"
    assert cli.main(["dashboard", str(tmp_path / "missing"), "--save", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"labkit dashboard: error: --save: run directory '{tmp_path / 'missing'}' does not exist" in err
    (tmp_path / "empty").mkdir()
    assert cli.main(["dashboard", str(tmp_path / "empty"), "--save", str(out)]) == 2
    assert "holds no telemetry*.jsonl, so there is nothing to save" in capsys.readouterr().err
    assert not out.exists()


def test_port_in_use_and_invalid_port_are_one_line_errors(run_dir, tmp_path, capsys):
    import socket
    for port, message in (("70000", "--port: 70000 is not a TCP port; allowed: 1-65535, or 0 for a free one"),
                          ("-1", "--port: -1 is not a TCP port")):
        assert cli.main(["dashboard", str(run_dir), "--port", port]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.main(["dashboard", str(run_dir), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"--port: 127.0.0.1:{port} is already in use" in err and len(err.strip().splitlines()) == 1


def test_static_snapshot_opens_offline_in_chromium(run_dir, tmp_path, browser):
    from tests.dashboard.conftest import JS_COLUMN_LENGTHS
    out = tmp_path / "snap.html"
    assert cli.main(["dashboard", str(run_dir), "--save", str(out)]) == 0
    page = browser.new_page()
    requested = []

    def _offline(route):  # no server and no network: only the file itself may load
        requested.append(route.request.url)
        route.abort() if not route.request.url.startswith(("file:", "data:", "blob:")) else route.continue_()
    page.route("**/*", _offline)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(out.as_uri(), timeout=120_000)  # 3 MiB of inlined JavaScript: slow on a busy machine
    page.wait_for_function("window.Bokeh && Bokeh.documents.length > 0", timeout=60_000)
    assert page.evaluate(JS_COLUMN_LENGTHS, "loss") == [40]
    assert [u for u in requested if not u.startswith(("file:", "data:", "blob:"))] == []
    assert errors == []
    page.close()


def _get(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=60).status
    except OSError:
        return 0


def _serve_and_check(cmd: list[str], url: str, title: str) -> None:
    env = dict(os.environ)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: _get(url) == 200 or proc.poll() is not None, timeout=240, message=f"{url}")  # busy CI
        assert proc.poll() is None, proc.stdout.read()
        with pull_session(url=url) as session:
            texts = [getattr(m, "text", None) or getattr(m, "object", None) for m in session.document.models]
            assert any(isinstance(t, str) and title in t for t in texts), title
            assert any(getattr(m, "data", {}).get("loss") == [loss_at(i) for i in range(40)]
                       for m in session.document.models if type(m).__name__ == "ColumnDataSource")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_labkit_dashboard_serves_the_run_on_loopback(run_dir):
    port = free_port()
    _serve_and_check([str(BIN / "labkit"), "dashboard", str(run_dir), "--port", str(port)],
                     f"http://127.0.0.1:{port}/", f"labkit dashboard: {run_dir}")


def test_panel_serve_runs_the_dashboards_app(run_dir):
    port = free_port()
    _serve_and_check([str(BIN / "panel"), "serve", "dashboards/training.py", "--port", str(port), "--address",
                      "127.0.0.1", "--allow-websocket-origin", f"127.0.0.1:{port}", "--args", str(run_dir)],
                     f"http://127.0.0.1:{port}/training", "step 39")
