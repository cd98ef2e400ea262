"""Dashboard test fixtures: an in-process Panel server on a free loopback port, and Debian's Chromium."""
from __future__ import annotations

import os
import socket
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("LABKIT_CHROMIUM", "/usr/bin/chromium")
# Headless flags; the network-quieting ones stop Chromium's own background connections (refused here).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--headless", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


@pytest.fixture
def serve():
    """serve(app_factory) -> base URL; the server runs on a thread and stops after the test."""
    import panel as pn
    servers = []

    def _serve(factory, title=None) -> str:
        port = free_port()
        server = pn.serve({"/": factory}, port=port, address="127.0.0.1", threaded=True, show=False,
                          verbose=False, websocket_origin=[f"127.0.0.1:{port}"], title=title)
        servers.append(server)
        url = f"http://127.0.0.1:{port}/"

        def _up():
            try:
                return urllib.request.urlopen(url, timeout=60).status == 200
            except OSError:
                return False
        wait_until(_up, timeout=120, message=f"{url} to answer")  # a loaded machine builds the first page slowly
        return url

    yield _serve
    for server in servers:
        server.stop()


@pytest.fixture
def browser():
    """Playwright's Chromium driver on Debian's /usr/bin/chromium (`make test` installs it); never downloads.

    Function-scoped: Playwright's sync API keeps an asyncio loop running on this thread while it is open, and
    ``bokeh.client.pull_session`` (other tests) cannot start its own loop then.
    """
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: `make test` installs Debian's chromium (as root), or set LABKIT_CHROMIUM")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in labkit's [test] extra")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# JavaScript: the length of every ColumnDataSource column named `column` in the page's Bokeh documents.
JS_COLUMN_LENGTHS = """(column) => {
  const out = [];
  for (const doc of (window.Bokeh ? Bokeh.documents : [])) {
    for (const m of doc.all_models) {
      if (m.type !== "ColumnDataSource") continue;
      const d = m.data;
      const v = d instanceof Map ? d.get(column) : d[column];
      if (v !== undefined) out.push(v.length);
    }
  }
  return out;
}"""
