"""dashboard.feed: one reader of a source, polled on a timer, fanned out to the views of one page.

Owns ``Feed``: it opens a reader on a source, polls it from a Panel periodic callback (in a ``panel serve``
session, on the session's event loop with the document lock held; in a Jupyter kernel, on the kernel's loop,
then pushes the changes to the notebook), keeps the run's description from its ``run`` events (torus, BN group,
backend, ``simulated``; a resumed run's start continues the same run, so its whole history stays on the page)
and shows a status line: why there is no data yet, and what was skipped and counted (torn lines, unknown kinds,
and implausible values: NaN, 1e30 images/s, unknown layer names, which are never plotted). The header shows the
loop's own summary fields (``time_to_accuracy_s``, ``images_per_s``): pages display them, never recompute them.
Training never waits for a page: writers only append to telemetry; the feed pulls when it can.
Must not: compute statistics or reach into training internals; a failing view is counted, never fatal.
"""
from __future__ import annotations

import collections
import html
import math
import time
import traceback

import panel as pn

from labkit.dashboard.sources import as_source

__all__ = ["Feed", "SIMULATED_NOTE"]

SIMULATED_NOTE = "simulated CPU devices: timings are simulation, not hardware"
_LIMIT = 1e15  # no reported quantity (images/s, seconds, bytes/s, loss) is plausibly larger


def _static_note() -> pn.pane.HTML:
    return pn.pane.HTML('<div style="color:#6b7280;font-size:90%">static snapshot: the controls are disabled '
                        "(no Python behind this page); <code>labkit dashboard RUNDIR</code> serves the live, "
                        "interactive page</div>", sizing_mode="stretch_width", margin=(0, 10))


def number(event: dict, field: str) -> float:
    """A numeric field of an event as float; NaN when missing or not a number (readers tolerate gaps)."""
    return to_float(event.get(field))


def to_float(value) -> float:
    """``value`` as a float, NaN if it is not a number."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return float("nan")


class Feed:
    """Polls ``source`` (a source, an ``EventStream``, a run directory, or None for ``telemetry.current()``).

    Views call ``subscribe(view)``; each poll hands every view the new events grouped by kind, split at ``run``
    events so that a view sees ``on_run`` between the events of consecutive runs. ``t0`` is the current run's
    start time (wall-time axes count from it).
    """

    def __init__(self, source=None, *, period_ms: int = 500, catch_up_s: float = 0.2, static: bool = False,
                 title: str | None = None):
        self.source = as_source(source)
        self.catch_up_s = catch_up_s
        self.reader = self.source.open()
        self.period_ms = int(period_ms)
        self.views: list = []
        self.run_start: dict | None = None
        self.run_end: dict | None = None
        self.runs = 0
        self.t0: float | None = None
        self.view_errors = 0
        self.last_error = ""
        self.polls = 0
        self.static = static  # a saved snapshot: no Python behind the page, so its widgets are disabled
        self.title = title
        self.bad_values: collections.Counter[str] = collections.Counter()  # field -> implausible values skipped
        self.callback = None
        self._roots: list = []
        self.status = pn.pane.HTML("", sizing_mode="stretch_width", margin=(0, 10))
        self.run_info = pn.pane.HTML("", sizing_mode="stretch_width", margin=(0, 10))
        self._render_status()

    # --- run description -------------------------------------------------------------------------------------
    @property
    def simulated(self) -> bool:
        return bool(self.run_start and self.run_start.get("simulated"))

    @property
    def torus(self) -> tuple[int, int] | None:
        torus = (self.run_start or {}).get("torus")
        if isinstance(torus, (list, tuple)) and len(torus) == 2 and all(isinstance(v, int) and v > 0 for v in torus):
            return int(torus[0]), int(torus[1])
        return None

    def timing_label(self, title: str) -> str:
        """A plot title, marked as simulation when the run says its timings come from simulated devices."""
        return f"{title} (simulation)" if self.simulated else title

    def value(self, event: dict, field: str, lo: float = -_LIMIT, hi: float = _LIMIT) -> float:
        """A numeric field for plotting: NaN when missing; NaN *and counted* when present but not a finite
        number within [lo, hi] (a NaN, an overflowed rate), so that one bad value never stretches an axis."""
        raw = event.get(field)
        if raw is None:
            return float("nan")
        v = to_float(raw)
        if not (math.isfinite(v) and lo <= v <= hi):
            self.bad_values[field] += 1
            return float("nan")
        return v

    def count_bad(self, field: str, n: int = 1) -> None:
        """Count ``n`` values of ``field`` that a view skipped as implausible (shown in the status line)."""
        self.bad_values[field] += n

    @staticmethod
    def continues(event: dict) -> bool:
        """True for the start event of a resumed run: it continues the run on the page, it does not replace it."""
        resumed = event.get("resumed_from")
        return event.get("phase") != "end" and isinstance(resumed, int) and not isinstance(resumed, bool) \
            and resumed > 0

    def wall(self, event: dict) -> float:
        """Wall seconds of the run at this event: the loop's own ``wall_s`` (counted across resumes) when the
        event carries it, else seconds since the current run's start event (or the first event seen)."""
        own = to_float(event.get("wall_s"))
        if math.isfinite(own) and own >= 0:
            return own
        t = number(event, "time")
        if self.t0 is None and math.isfinite(t):
            self.t0 = t
        return t - self.t0 if self.t0 is not None else float("nan")

    # --- wiring ----------------------------------------------------------------------------------------------
    def subscribe(self, view) -> None:
        self.views.append(view)

    def page(self, views: dict, *, header=None, live: bool = True) -> pn.Column:
        """The page of ``views`` (name -> view): header, run description, status, then each view's panel.

        The page carries ``.feed`` (this feed) and ``.views``; with ``live`` it polls every ``period_ms``.
        """
        if header is None:  # a single view (``labkit dashboard --view``): still a titled page
            name = " and ".join(views)
            from labkit.dashboard.style import heading
            header = heading(self.title or f"labkit {name} view: {self.source.label}")
        parts = [header, self.run_info, self.status]
        if self.static:
            parts.append(_static_note())
        for i, view in enumerate(views.values()):
            if i:
                parts.append(pn.pane.HTML('<hr style="margin:0;border:0;border-top:1px solid #e5e7eb">',
                                          sizing_mode="stretch_width", margin=(4, 0)))
            parts.append(view.panel)
        root = pn.Column(*parts, sizing_mode="stretch_width")
        root.feed, root.views = self, dict(views)
        if self.static:
            for widget in root.select(pn.widgets.Widget):
                widget.disabled = True
        return self.attach(root, live=live)

    def attach(self, root, *, live: bool = True):
        """Register a page root (for notebook pushes) and, if ``live``, start polling; returns ``root``."""
        self._roots.append(root)
        self.poll()
        if live and self.callback is None:
            self.callback = pn.state.add_periodic_callback(self.poll, period=self.period_ms, start=True)
        return root

    def live_toggle(self) -> pn.widgets.Toggle:
        """A button that pauses and resumes this page's polling (training is not affected either way)."""
        toggle = pn.widgets.Toggle(label="live", value=True, width=80, margin=(5, 10))

        def _flip(event):
            if self.callback is not None:
                self.callback.running = event.new
        toggle.param.watch(_flip, "value")
        return toggle

    def finish(self) -> None:
        """No more data will come (a static snapshot): settle the counts shown."""
        self.reader.finish()
        self._render_status()

    def stop(self) -> None:
        if self.callback is not None:
            self.callback.stop()

    # --- polling ---------------------------------------------------------------------------------------------
    def poll(self) -> int:
        """Read new events and update every view; returns how many events arrived. Never raises.

        A reader hands out a bounded chunk per call; while catching up on a long run, chunks are read until
        ``catch_up_s`` has passed, so the page fills quickly yet the event loop stays responsive.
        """
        self.polls += 1
        deadline = time.monotonic() + self.catch_up_s
        total = 0
        while True:
            try:
                events = self.reader.poll()
            except Exception as e:  # an unreadable file must not kill the page: say so and try again next tick
                self.last_error = f"reading {self.source.label}: {type(e).__name__}: {e}"
                break
            self.last_error = "" if self.last_error.startswith("reading ") else self.last_error
            self._handle(events)
            total += len(events)
            if not events or time.monotonic() > deadline:
                break
        if total or self.polls == 1 or self.last_error:
            self._render_status()
            self._push_notebook()
        return total

    def _handle(self, events: list[dict]) -> None:
        segment: list[dict] = []
        for event in events:
            if event["kind"] == "run":
                self._dispatch(segment)
                segment = []
                self._on_run(event)
            else:
                segment.append(event)
        self._dispatch(segment)

    def _on_run(self, event: dict) -> None:
        if event.get("phase") == "end":
            self.run_end = event
        elif self.continues(event) and self.run_start is not None:
            self.run_start, self.run_end = event, None  # same run, same wall-time origin, same line per run
        else:
            self.run_start, self.run_end = event, None
            self.runs += 1
            t = number(event, "time")
            self.t0 = t if math.isfinite(t) else None
        for view in self.views:
            self._call(view.on_run, event)
        self._render_run_info()

    def _dispatch(self, events: list[dict]) -> None:
        if not events:
            return
        by_kind: dict[str, list[dict]] = {}
        for event in events:
            if self.t0 is None:
                self.wall(event)
            by_kind.setdefault(event["kind"], []).append(event)
        for view in self.views:
            mine = {k: v for k, v in by_kind.items() if k in view.kinds}
            if mine:
                self._call(view.on_events, mine)

    def _call(self, fn, arg) -> None:
        try:
            fn(arg)
        except Exception as e:  # a malformed event must not stop the live page
            self.view_errors += 1
            self.last_error = f"{type(e).__name__}: {e} ({traceback.extract_tb(e.__traceback__)[-1].name})"

    def _push_notebook(self) -> None:
        doc = pn.state.curdoc
        if doc is not None and doc.session_context is not None:
            return  # a server session: Bokeh sends the changes itself
        for root in self._roots:
            try:
                pn.io.push_notebook(root)
            except Exception:  # not displayed in a notebook (a script, a test): nothing to push
                pass

    # --- text ------------------------------------------------------------------------------------------------
    def _render_run_info(self) -> None:
        s = self.run_start or {}
        parts = []
        if s.get("model"):
            parts.append(f"<b>{html.escape(str(s['model']))}</b>")
        torus = self.torus
        if s.get("replicas") is not None:
            parts.append(f"{s['replicas']} replicas" + (f" on a {torus[0]}x{torus[1]} torus" if torus else ""))
        if s.get("bn_group") is not None:
            parts.append(f"BN group {s['bn_group']}")
        if s.get("global_batch") is not None:
            parts.append(f"global batch {s['global_batch']}")
        if s.get("backend"):
            parts.append(f"backend {html.escape(str(s['backend']))}")
        if self.runs > 1:
            parts.append(f"run {self.runs} in this stream")
        if self.run_end is not None:
            error = self.run_end.get("error")
            parts.append(f'<span style="color:#b91c1c">ended: {html.escape(str(error))}</span>' if error
                         else self._end_summary())
        text = " &middot; ".join(parts)
        if self.simulated:
            text += f' &nbsp;<span style="color:#b45309">({SIMULATED_NOTE})</span>'
        self.run_info.object = f"<div>{text}</div>" if text else ""

    def _end_summary(self) -> str:
        """The loop's own numbers from the run end event (summary.json's fields), as reported."""
        e, sim = self.run_end or {}, " (simulation)" if self.simulated else ""
        parts = [f"finished ({html.escape(str(e['stopped']))})" if e.get("stopped") else "finished"]
        top1, tta, ips = number(e, "top1"), number(e, "time_to_accuracy_s"), number(e, "images_per_s")
        if math.isfinite(top1):
            parts.append(f"top-1 {top1:.4f}")
        if math.isfinite(tta):
            parts.append(f"time to accuracy {tta:,.1f} s wall{sim}")
        if math.isfinite(ips) and 0 < ips < _LIMIT:
            parts.append(f"{ips:,.0f} images/s steady{sim}")
        return " &middot; ".join(parts)

    def _render_status(self) -> None:
        r = self.reader
        color = "#6b7280"
        if not r.seen and r.status:
            text, color = f"waiting: {html.escape(r.status)}", "#b45309"
        else:
            text = f"{html.escape(self.source.label)}: {html.escape(r.summary())}"
        if self.bad_values:
            n = sum(self.bad_values.values())
            fields = ", ".join(f"{k} x{v}" for k, v in sorted(self.bad_values.items()))
            text += f"; {n:,} implausible value{'s' * (n != 1)} skipped ({html.escape(fields)})"
        if self.view_errors:
            text += f"; {self.view_errors} malformed event batch(es) not shown (last: {html.escape(self.last_error)})"
        elif self.last_error:
            text += f"; {html.escape(self.last_error)}"
        self.status.object = f'<div style="color:{color};font-size:90%">{text}</div>'
