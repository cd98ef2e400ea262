"""dashboard.breakdown_view: where a training step's time goes, one stacked bar per profiled configuration.

Owns the step-breakdown panel, fed by ``step_breakdown`` events (``labkit.profile``: step_s, seconds and
fractions by category, collective_ops, model, global_batch, bn_group, allreduce, simulated): a horizontal bar
per event, its segments the milliseconds per step of compute, BN collectives, gradient all-reduce, other
collectives, input wait and host, plus a readout of the latest event's fractions.
Must not: profile anything or read traces (``labkit.profile`` does); it plots the numbers it is sent.
"""
from __future__ import annotations

import html
import math

import panel as pn
from bokeh.models import ColumnDataSource, FactorRange

from labkit.dashboard.feed import Feed
from labkit.dashboard.style import colors, new_figure, note, outside_legend, plot_grid, waiting_label

__all__ = ["BreakdownView", "breakdown_view", "CATEGORIES"]

# The categories of labkit.profile.CATEGORIES, in the same order (not imported: dashboards read telemetry only).
CATEGORIES = ("compute", "bn_collectives", "gradient_allreduce", "other_collectives", "unattributed", "input_wait",
              "host")
_LABELS = {"compute": "compute", "bn_collectives": "BN collectives", "gradient_allreduce": "gradient all-reduce",
           "other_collectives": "other collectives", "unattributed": "unattributed device time",
           "input_wait": "input wait", "host": "host"}


class BreakdownView:
    """The step-breakdown panel of one ``Feed``; ``panel`` is the Panel layout, ``source`` the plotted rows."""

    kinds = ("step_breakdown",)

    def __init__(self, feed: Feed, *, max_rows: int = 12):
        self.feed = feed
        self.max_rows = max_rows
        self.rows: list[dict] = []        # one per event: label, ms per category, fractions
        self.simulated = False
        self.readout = note("no step_breakdown events yet: <code>labkit.profile.profile_training(config)</code> "
                            "measures one and <code>labkit.profile.emit_breakdown</code> reports it")
        self.source = ColumnDataSource(data=self._columns([]))
        self.fig = new_figure(self._title(), height=260, y_range=FactorRange(), x_axis_label="ms per step",
                              y_axis_label="configuration",
                              tooltips=[("configuration", "@label"), ("step", "@step_ms{0.00} ms")]
                              + [(_LABELS[c], f"@{c}{{0.00}} ms") for c in CATEGORIES])
        outside_legend(self.fig)
        self.fig.hbar_stack(list(CATEGORIES), y="label", height=0.6, source=self.source, color=colors(len(CATEGORIES)),
                            legend_label=[_LABELS[c] for c in CATEGORIES])
        self._waiting = waiting_label(self.fig, "waiting for step_breakdown events (labkit.profile)")
        self.panel = pn.Column(pn.pane.HTML("<b>Step time breakdown (jax.profiler)</b>", margin=(12, 10, 0, 10)),
                               self.readout, plot_grid(self.fig, basis=520, share=60), sizing_mode="stretch_width")
        feed.subscribe(self)

    def _title(self) -> str:
        title = "where a step's time goes (mean of the traced steps)"
        return f"{title} (simulation)" if self.simulated or self.feed.simulated else title

    @staticmethod
    def _columns(rows: list[dict]) -> dict:
        data = {"label": [r["label"] for r in rows], "step_ms": [r["step_ms"] for r in rows]}
        data.update({c: [r["ms"][c] for r in rows] for c in CATEGORIES})
        return data

    def on_run(self, event: dict) -> None:
        self.fig.title.text = self._title()  # breakdowns of earlier runs stay: they are comparisons

    def on_events(self, by_kind: dict[str, list[dict]]) -> None:
        for e in by_kind.get("step_breakdown", []):
            seconds = e.get("seconds") if isinstance(e.get("seconds"), dict) else {}
            ms = {c: self.feed.value(seconds, c, 0.0, 1e5) * 1e3 for c in CATEGORIES}
            ms = {c: v if math.isfinite(v) else 0.0 for c, v in ms.items()}
            if not any(ms.values()):
                self.feed.count_bad("step_breakdown.seconds")
                continue
            self.simulated = self.simulated or e.get("simulated") is True
            label = self._label(e, len(self.rows) + 1)
            step_ms = self.feed.value(e, "step_s", 0.0, 1e5) * 1e3
            self.rows.append({"label": label, "ms": ms, "step_ms": step_ms,
                              "fractions": e.get("fractions") if isinstance(e.get("fractions"), dict) else {}})
        self.rows = self.rows[-self.max_rows:]
        if self.rows:
            self._waiting.visible = False
            self.fig.y_range.factors = [r["label"] for r in self.rows]
            self.source.data = self._columns(self.rows)
            self.fig.title.text = self._title()
            self._update_readout()

    @staticmethod
    def _label(e: dict, n: int) -> str:
        parts = [str(e[k]) for k in ("model",) if e.get(k)]
        if e.get("global_batch"):
            parts.append(f"batch {e['global_batch']}")
        if e.get("bn_group"):
            parts.append(f"g={e['bn_group']}")
        if e.get("allreduce"):
            parts.append(str(e["allreduce"]))
        return f"#{n} " + " ".join(parts)

    def _update_readout(self) -> None:
        last = self.rows[-1]
        parts = [f"{_LABELS[c]} {float(last['fractions'].get(c, 0.0)):.0%}" for c in CATEGORIES
                 if isinstance(last["fractions"].get(c), (int, float)) and last["fractions"][c] > 0]
        sim = " (simulation)" if self.simulated or self.feed.simulated else ""
        self.readout.object = (f'<div style="font-size:90%">{html.escape(last["label"])}: '
                               f'{last["step_ms"]:,.2f} ms per step{sim}: {" &middot; ".join(parts)}</div>')


def breakdown_view(source=None, *, period_ms: int = 500, live: bool = True) -> pn.Column:
    """The step-breakdown panel alone: ``source`` is a source, EventStream, run directory or None."""
    feed = Feed(source, period_ms=period_ms)
    view = BreakdownView(feed)
    return feed.page({"breakdown": view}, live=live)
