"""dashboard.app: the overview page (training, per-replica BN statistics, host input queues, collectives, step time).

Owns ``overview``: one ``Feed`` on one source, the views subscribed to it, a header with the run's
description, the reader's status (why there is no data yet; what was skipped and counted), a button pausing this
page's polling, and room for the caller's own widgets (``controls``: e.g. start/stop buttons of a training run
in a notebook). Also ``save_snapshot``, the self-contained static HTML of a source's events so far.
Must not: start or steer training, or compute anything the library reports.
"""
from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path

import panel as pn

from labkit.dashboard.bn_view import BNView
from labkit.dashboard.breakdown_view import BreakdownView
from labkit.dashboard.collective_view import CollectiveView
from labkit.dashboard.feed import Feed
from labkit.dashboard.input_view import InputView
from labkit.dashboard.style import flow_row, heading
from labkit.dashboard.training_view import TrainingView

__all__ = ["overview", "save_snapshot", "VIEWS"]

VIEWS = {"training": TrainingView, "bn": BNView, "input": InputView, "collectives": CollectiveView,
         "breakdown": BreakdownView}


def overview(source=None, controls=None, *, views=tuple(VIEWS), period_ms: int = 500, live: bool = True,
             title: str | None = None, static: bool = False) -> pn.Column:
    """The overview dashboard of ``source``, polling it every ``period_ms`` while ``live``.

    ``source``: a ``MemorySource`` / ``RunDirSource``, a ``telemetry.EventStream``, a run directory path, or None
    (this process's ``telemetry.current()``). ``controls``: a widget or list of widgets placed in the header.
    ``views``: which of ``VIEWS`` to show, in order. The returned layout carries ``.feed`` and ``.views``
    (name -> view object, whose ``Series`` and ``ColumnDataSource`` hold what the plots show). ``static``: the
    page will be saved as HTML with no Python behind it, so its widgets are disabled and a note says so.
    In a notebook run ``pn.extension()`` once first; the page updates while a training thread emits.
    """
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise ValueError(f"views: unknown {unknown}; allowed: {list(VIEWS)}")
    feed = Feed(source, period_ms=period_ms, static=static)
    built = {name: VIEWS[name](feed) for name in views}
    title = title or f"labkit dashboard: {feed.source.label}"
    extra = list(controls) if isinstance(controls, (list, tuple)) else [] if controls is None else [controls]
    header = flow_row(heading(title), *extra, *([feed.live_toggle()] if live else []))
    return feed.page(built, header=header, live=live)


def save_snapshot(source, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Write the overview of ``source``'s events so far as one self-contained HTML file (opens offline).

    The Bokeh and Panel JavaScript is inlined and the data is embedded; nothing is fetched when it opens.
    """
    path = Path(path)
    page = overview(source, live=False, title=title, static=True)
    for _ in range(10_000):  # a long run is read in chunks: drain it
        if not page.feed.poll():
            break
    page.feed.finish()
    path.parent.mkdir(parents=True, exist_ok=True)
    page.save(str(path), embed=False, resources="inline", title=title or "labkit dashboard")
    path.write_text(_inline_panel_css(path.read_text(encoding="utf-8")), encoding="utf-8")
    return path


def _inline_panel_css(text: str) -> str:
    """Panel links its components' stylesheets (and icons) from its CDN even with inline resources: embed the installed
    copies as data: URLs so the snapshot opens offline looking the same (a file not installed stays a link)."""
    dist = Path(pn.__file__).parent / "dist"

    def _embed(match: re.Match) -> str:
        local = dist / match.group(1)
        if not local.is_file():
            return match.group(0)
        mime = _MIME[local.suffix]
        return f"data:{mime};base64," + base64.b64encode(local.read_bytes()).decode("ascii")
    return re.sub(r"https://cdn\.holoviz\.org/panel/[^/\"]+/dist/([\w./-]+\.(?:css|png|ico))", _embed, text)


_MIME = {".css": "text/css", ".png": "image/png", ".ico": "image/x-icon"}
