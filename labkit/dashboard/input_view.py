"""dashboard.input_view: every host's input pipeline, live: queue depth, consumer wait, input-bound, images/s.

Owns the input panel, fed by ``input_queue`` events (one per host and consumer step: depth, capacity, wait_s,
images_per_s_in, images_per_s_out, skipped, input_bound): per host, the prefetch-queue depth against its capacity
over wall time, the consumer's wait per step, images/s produced and consumed, the share of steps that were
input-bound (whole run and the last ``window`` steps) and the cumulative skipped-record count.
Must not: measure the pipeline (``labkit.data`` does); it only counts and downsamples reported values.
"""
from __future__ import annotations

import collections

import panel as pn
from bokeh.models import ColumnDataSource, FactorRange

from labkit.dashboard.feed import Feed, number
from labkit.dashboard.series import Series
from labkit.dashboard.style import colors, new_figure, note, outside_legend, plot_grid, waiting_label

__all__ = ["InputView", "input_view"]

_COLUMNS = ("t", "step", "depth", "capacity", "wait_s", "images_per_s_in", "images_per_s_out")


class InputView:
    """The host input-queue panel of one ``Feed``; ``panel`` is the Panel layout."""

    kinds = ("input_queue",)

    def __init__(self, feed: Feed, *, max_points: int = 1500, window: int = 100):
        self.feed = feed
        self.max_points = max_points
        self.window = window
        self.hosts: dict[int, Series] = {}
        self.bound_total: dict[int, list[int]] = {}    # host -> [input-bound steps, steps]
        self.bound_recent: dict[int, collections.deque] = {}
        self.skipped: dict[int, int] = {}
        self.readout = note("no input_queue events yet: the input pipeline reports one per host and step")
        self.bound = ColumnDataSource(data={k: [] for k in ("host", "whole_run", "recent", "steps", "skipped")})
        self._build_figures()
        self.panel = pn.Column(
            pn.pane.HTML("<b>Host input queues</b>", margin=(12, 10, 0, 10)), self.readout,
            plot_grid(*self.figures),
            sizing_mode="stretch_width")
        feed.subscribe(self)

    def _build_figures(self) -> None:
        self.fig_depth = new_figure("prefetch queue depth (dashed: capacity)", x_axis_label="wall time (s)",
                                    y_axis_label="batches")
        self.fig_wait = new_figure(self.feed.timing_label("consumer wait per step"), x_axis_label="step",
                                   y_axis_label="wait (s)")
        self.fig_rate = new_figure(self.feed.timing_label("images/s produced (solid) and consumed (dashed)"),
                                   x_axis_label="wall time (s)", y_axis_label="images/s")
        self.fig_bound = new_figure("input-bound share of steps: whole run (bar), last steps (dot)",
                                    x_range=FactorRange(), y_range=(0, 1.05), x_axis_label="host",
                                    y_axis_label="fraction of steps",
                                    tooltips=[("host", "@host"), ("whole run", "@whole_run{0.0%}"),
                                              ("recent", "@recent{0.0%}"), ("steps", "@steps"),
                                              ("skipped records", "@skipped")])
        self.fig_bound.vbar("host", 0.6, "whole_run", source=self.bound, color="#f59e0b")
        self.fig_bound.scatter("host", "recent", source=self.bound, size=10, color="#b91c1c")
        self.figures = [self.fig_depth, self.fig_wait, self.fig_rate, self.fig_bound]
        for fig in self.figures[:3]:
            outside_legend(fig)
        self._waiting = [waiting_label(f) for f in self.figures[:3]]

    def on_run(self, event: dict) -> None:
        if event.get("phase") == "end" or self.feed.continues(event):  # a resume keeps the history
            return
        for series in self.hosts.values():
            series.clear()
        self.bound_total, self.bound_recent, self.skipped = {}, {}, {}
        self.bound.data = {k: [] for k in self.bound.data}
        for fig, title in ((self.fig_wait, "consumer wait per step"),
                           (self.fig_rate, "images/s produced (solid) and consumed (dashed)")):
            fig.title.text = self.feed.timing_label(title)

    def on_events(self, by_kind: dict[str, list[dict]]) -> None:
        per_host: dict[int, list[dict]] = {}
        for e in by_kind.get("input_queue", []):
            host = e.get("host")
            per_host.setdefault(host if isinstance(host, int) else 0, []).append(e)
        for host, events in sorted(per_host.items()):
            self._series(host).extend({
                "t": [self.feed.wall(e) for e in events], "step": [number(e, "step") for e in events],
                **{c: [self.feed.value(e, c, 0.0) for e in events] for c in _COLUMNS[2:]}})
            total = self.bound_total.setdefault(host, [0, 0])
            recent = self.bound_recent.setdefault(host, collections.deque(maxlen=self.window))
            for e in events:
                bound = bool(e.get("input_bound"))
                total[0] += bound
                total[1] += 1
                recent.append(bound)
                skipped = number(e, "skipped")
                if skipped == skipped:  # cumulative: the latest report is the count
                    self.skipped[host] = int(skipped)
        if per_host:
            self._draw_bound()

    def _series(self, host: int) -> Series:
        if host not in self.hosts:
            series = Series(_COLUMNS, max_points=self.max_points, last_columns=("t", "step"))
            self.hosts[host] = series
            for label in self._waiting:
                label.visible = False
            color = colors(10)[host % 10]
            src, label = series.source, f"host {host}"
            self.fig_depth.line("t", "depth", source=src, color=color, line_width=2, legend_label=label)
            self.fig_depth.line("t", "capacity", source=src, color=color, line_dash="dashed", alpha=0.6)
            self.fig_wait.line("step", "wait_s", source=src, color=color, line_width=1.5, legend_label=label)
            self.fig_rate.line("t", "images_per_s_in", source=src, color=color, line_width=2, legend_label=label)
            self.fig_rate.line("t", "images_per_s_out", source=src, color=color, line_width=2, line_dash="dashed")
        return self.hosts[host]

    def _draw_bound(self) -> None:
        hosts = sorted(self.bound_total)
        data = {"host": [f"host {h}" for h in hosts],
                "whole_run": [self.bound_total[h][0] / max(self.bound_total[h][1], 1) for h in hosts],
                "recent": [sum(self.bound_recent[h]) / max(len(self.bound_recent[h]), 1) for h in hosts],
                "steps": [self.bound_total[h][1] for h in hosts],
                "skipped": [self.skipped.get(h, 0) for h in hosts]}
        if list(self.fig_bound.x_range.factors) != data["host"]:
            self.fig_bound.x_range.factors = data["host"]
        self.bound.data = data
        parts = []
        for i, h in enumerate(hosts):
            latest = self.hosts[h].data()
            depth = next((d for d in reversed(latest["depth"]) if d == d), float("nan"))
            parts.append(f"host {h}: {data['whole_run'][i]:.0%} of {data['steps'][i]:,} steps input-bound "
                         f"(last {self.window}: {data['recent'][i]:.0%}), queue depth {depth:.1f}, "
                         f"<b>{data['skipped'][i]:,} skipped records</b>")
        self.readout.object = '<div style="font-size:90%">' + " &middot; ".join(parts) + "</div>"


def input_view(source=None, *, period_ms: int = 500, live: bool = True) -> pn.Column:
    """Host input queues, live: ``source`` is a source, EventStream, run directory or None."""
    feed = Feed(source, period_ms=period_ms)
    view = InputView(feed)
    return feed.page({"input": view}, live=live)
