"""dashboard.bn_view: per-replica batch statistics of distributed batch norm, live.

Owns the BN panel, fed by ``bn_stats`` events (one per captured layer and step, with a value per replica for
each ``labkit.bn.BN_STAT_FIELDS`` entry and the ``groups`` of replicas): a replica x layer heatmap of one
deviation field at the latest captured step, each replica's deviation over steps (mean over layers), the BN
noise over steps with one line per run (so rerunning with a larger ``bn_group`` shows the noise shrink side by
side), and the BN groups drawn on the torus from the run's ``torus`` [X, Y]. Per-replica lines are coloured by BN
group (the legend says so) and keep every deviation field, so switching the field redraws, never empties, a plot.
Layers that are not among the run's captured layers, and implausible values, are skipped and counted.
Must not: compute batch statistics (``labkit.bn`` does); it only averages reported values for display.
"""
from __future__ import annotations

import math

import panel as pn
from bokeh.models import ColumnDataSource, ColorBar, FactorRange, Legend, LinearColorMapper
from bokeh.palettes import Viridis256

from labkit.dashboard.feed import Feed, number
from labkit.dashboard.series import Series
from labkit.dashboard.style import colors, flow_row, new_figure, note, outside_legend, plot_grid, waiting_label

__all__ = ["BNView", "bn_view"]

DEVIATIONS = ("replica_vs_group", "replica_vs_running", "group_vs_running")
_NOISE = "group_vs_running"  # the BN noise the group size controls (labkit.bn.BN_STAT_FIELDS)
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_MAX_DEVIATION = 1e6  # deviations are relative: a larger value is a broken record, skipped and counted


def _column(replica: int, metric: str) -> str:
    return f"r{replica}_{DEVIATIONS.index(metric)}"


def _mean(values) -> float:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def _group_label(i: int) -> str:
    return _LETTERS[i] if i < len(_LETTERS) else f"G{i}"


class BNView:
    """The batch-statistics panel of one ``Feed``; ``panel`` is the Panel layout."""

    kinds = ("bn_stats",)

    def __init__(self, feed: Feed, *, metric: str = _NOISE, max_points: int = 1000,
                 max_replica_lines: int = 64):
        if metric not in DEVIATIONS:
            raise ValueError(f"metric: {metric!r} is not a deviation field; allowed: {list(DEVIATIONS)}")
        self.feed = feed
        self.max_points = max_points
        self.max_replica_lines = max_replica_lines
        self.metric = pn.widgets.Select(label="deviation", options=list(DEVIATIONS), value=metric, width=190)
        self.readout = note("no bn_stats events yet: a run captures them every few steps "
                            "(run_demo's bn_stats_every)")
        self.latest: dict[str, dict] = {}    # layer -> its latest bn_stats event
        self.layers: list[str] = []          # capture order
        self.groups: list[list[int]] = []
        self.noise: dict[int, Series] = {}   # run number -> mean BN noise per step
        self.per_replica: Series | None = None
        self._pending_step = None
        self._pending: dict[str, dict] = {}
        self._complete_layers: set[str] = set()
        self._build_figures()
        self.metric.param.watch(lambda _e: self._refresh_metric(), "value")
        self.panel = pn.Column(
            flow_row(pn.pane.HTML("<b>Per-replica batch statistics</b>", margin=(12, 10, 0, 10)), self.metric),
            self.readout,
            plot_grid(self.fig_heat, pn.pane.Bokeh(self.fig_torus, width=330), basis=380, share=55),
            plot_grid(self.fig_replica, self.fig_noise),
            sizing_mode="stretch_width")
        feed.subscribe(self)

    def _build_figures(self) -> None:
        self.heat = ColumnDataSource(data={k: [] for k in ("replica", "layer", "value", "group", *DEVIATIONS)})
        self.mapper = LinearColorMapper(palette=Viridis256, low=0.0, high=1.0)
        self.fig_heat = new_figure(f"{self.metric.value} at the latest captured step (replica x layer)",
                                   height=300, x_range=FactorRange(), y_range=FactorRange(),
                                   x_axis_label="replica", y_axis_label="BN layer", tooltips=[("replica", "@replica"), ("group", "@group"),
                                                                     ("layer", "@layer"), ("value", "@value")])
        self.fig_heat.rect("replica", "layer", 1, 1, source=self.heat, line_color=None,
                           fill_color={"field": "value", "transform": self.mapper})
        self.color_bar = ColorBar(color_mapper=self.mapper, width=8, title=self._bar_title(),
                                  title_text_font_size="10px", title_text_font_style="normal")
        self.fig_heat.add_layout(self.color_bar, "right")
        self.fig_heat.yaxis.major_label_text_font_size = "9px"
        self.fig_heat.grid.visible = False

        self.torus = ColumnDataSource(data={k: [] for k in ("x", "y", "replica", "group", "label", "color")})
        self.fig_torus = new_figure("BN groups on the torus", height=300, width=330, sizing_mode="fixed",
                                    match_aspect=True, tooltips=[("replica", "@replica"), ("group", "@group"),
                                                                 ("(x, y)", "(@y, @x)")])
        self.fig_torus.rect("x", "y", 0.92, 0.92, source=self.torus, fill_color="color", line_color="white")
        self.fig_torus.text("x", "y", text="label", source=self.torus, text_align="center",
                            text_baseline="middle", text_color="white", text_font_size="12px")
        self.fig_torus.y_range.flipped = True
        self.fig_torus.xaxis.axis_label = "torus x (column)"
        self.fig_torus.yaxis.axis_label = "torus y (row)"
        self.fig_torus.axis.major_label_text_font_size = "0px"  # positions, not quantities: labels only
        self.fig_torus.axis.major_tick_line_color = None
        self.fig_torus.axis.minor_tick_line_color = None
        self.fig_torus.grid.visible = False

        self.fig_replica = new_figure(f"each replica's {self.metric.value}, mean over layers",
                                      x_axis_label="step", y_axis_label="deviation (mean over layers)")
        self.fig_replica.add_layout(Legend(title="colour = BN group", label_text_font_size="10px",
                                           title_text_font_size="10px"), "right")
        self.fig_noise = new_figure(f"BN noise ({_NOISE}, mean over replicas and layers), one line per run",
                                    x_axis_label="step", y_axis_label=f"{_NOISE} (mean)")
        outside_legend(self.fig_noise)
        self._waiting = [waiting_label(self.fig_replica), waiting_label(self.fig_noise)]

    # --- feed callbacks --------------------------------------------------------------------------------------
    def on_run(self, event: dict) -> None:
        if event.get("phase") == "end":
            self._flush_pending()
            return
        self._flush_pending()
        if self.feed.continues(event):  # a resumed run: same layers, same history
            self._draw_torus()
            return
        self.latest, self.layers, self._complete_layers = {}, [], set()
        if self.per_replica is not None:
            self.per_replica.clear()
        self._draw_torus()

    def on_events(self, by_kind: dict[str, list[dict]]) -> None:
        events = []
        for e in by_kind.get("bn_stats", []):
            layer = e.get("layer")
            if not isinstance(layer, str) or not layer or (self._complete_layers and layer not in self._complete_layers):
                self.feed.count_bad("bn_stats layer")  # not one of the run's captured layers: never a new row
                continue
            e = self._clean(e)
            events.append(e)
            if e.get("step") != self._pending_step:
                self._flush_pending()
                self._pending_step = e.get("step")
            if e["layer"] in self._pending:  # the same layer again: a new capture at the same step number
                self._flush_pending()
            self._pending[e["layer"]] = e
            if e["layer"] not in self.latest:
                self.layers.append(e["layer"])
            self.latest[e["layer"]] = e
            groups = e.get("groups")
            if isinstance(groups, list) and groups != self.groups:
                self.groups = [list(g) for g in groups if isinstance(g, list)]
                self.per_replica = None  # recoloured by group on the next step
                self._draw_torus()
        if self._complete_layers and self._complete_layers <= set(self._pending):
            self._flush_pending()
        if events:
            self._draw_heatmap()

    def _clean(self, e: dict) -> dict:
        """The event with each deviation list's implausible entries (NaN, inf, huge) as NaN, counted."""
        e = dict(e)
        for field in DEVIATIONS:
            values = e.get(field)
            if isinstance(values, list):
                e[field] = [self.feed.value({field: v}, field, 0.0, _MAX_DEVIATION) for v in values]
        return e

    def _bar_title(self) -> str:
        return f"{self.metric.value} (relative deviation)"

    # --- per-step traces -------------------------------------------------------------------------------------
    def _flush_pending(self) -> None:
        """A step's layers are all in: add its per-replica and noise points."""
        if not self._pending:
            return
        layers = list(self._pending.values())
        self._complete_layers = self._complete_layers or set(self._pending)
        step = number(layers[0], "step")
        replicas = max((len(e[m]) for e in layers for m in DEVIATIONS if isinstance(e.get(m), list)), default=0)
        if replicas:
            shown = min(replicas, self.max_replica_lines)
            self._ensure_replica_lines(shown)
            row = {"step": [step]}
            for metric in DEVIATIONS:  # every field, so switching the field shows the whole run at once
                per_layer = [e.get(metric) for e in layers if isinstance(e.get(metric), list)]
                for r in range(shown):
                    row[_column(r, metric)] = [_mean(v[r] for v in per_layer if len(v) > r)]
            self.per_replica.extend(row)
        noise = [_mean(e[_NOISE]) for e in layers if isinstance(e.get(_NOISE), list)]
        if noise:
            self._noise_series().extend({"step": [step], "noise": [_mean(noise)]})
        self._pending, self._pending_step = {}, None

    def _ensure_replica_lines(self, replicas: int) -> None:
        columns = ("step", *(_column(r, m) for r in range(replicas) for m in DEVIATIONS))
        if self.per_replica is not None and self.per_replica.columns == columns:
            return
        self.per_replica = Series(columns, max_points=self.max_points, last_columns=("step",))
        self.fig_replica.renderers = []
        self.fig_replica.legend[0].items = []
        self._waiting[0].visible = False
        group_of = {r: gi for gi, g in enumerate(self.groups) for r in g}
        palette = colors(max(len(self.groups), 1))
        for r in range(replicas):
            gi = group_of.get(r)
            members = ",".join(map(str, self.groups[gi])) if gi is not None else "?"
            label = f"group {_group_label(gi)}: replicas {members}" if gi is not None else "no group"
            self.fig_replica.line("step", _column(r, self.metric.value), source=self.per_replica.source,
                                  line_width=1.5, alpha=0.8, color=palette[(gi or 0) % len(palette)],
                                  legend_label=label)

    def _noise_series(self) -> Series:
        run = self.feed.runs
        if run not in self.noise:
            self.noise[run] = Series(("step", "noise"), max_points=self.max_points, last_columns=("step",))
            self._waiting[1].visible = False
            bn_group = (self.feed.run_start or {}).get("bn_group", "?")
            color = colors(10)[(len(self.noise) - 1) % 10]
            self.fig_noise.line("step", "noise", source=self.noise[run].source, line_width=2, color=color,
                                legend_label=f"run {run}: bn_group {bn_group}")
        return self.noise[run]

    # --- drawing ---------------------------------------------------------------------------------------------
    def _draw_heatmap(self) -> None:
        metric = self.metric.value
        group_of = {r: _group_label(gi) for gi, g in enumerate(self.groups) for r in g}
        data = {k: [] for k in self.heat.data}
        replicas = 0
        for layer in self.layers:
            e = self.latest[layer]
            values = e.get(metric) if isinstance(e.get(metric), list) else []
            replicas = max(replicas, len(values))
            for r, v in enumerate(values):
                data["replica"].append(str(r))
                data["layer"].append(layer)
                data["value"].append(v if isinstance(v, (int, float)) else float("nan"))
                data["group"].append(group_of.get(r, "?"))
                for field in DEVIATIONS:
                    col = e.get(field)
                    data[field].append(col[r] if isinstance(col, list) and len(col) > r else float("nan"))
        x_factors = [str(r) for r in range(replicas)]
        if list(self.fig_heat.x_range.factors) != x_factors:
            self.fig_heat.x_range.factors = x_factors
        if list(self.fig_heat.y_range.factors) != self.layers[::-1]:
            self.fig_heat.y_range.factors = self.layers[::-1]  # the first captured layer on top
            self.fig_heat.height = max(300, 16 * len(self.layers) + 60)
        self.heat.data = data
        finite = [v for v in data["value"] if math.isfinite(v)]
        self.mapper.low, self.mapper.high = 0.0, max(max(finite, default=1.0), 1e-12)
        steps = {self.latest[layer].get("step") for layer in self.layers}
        noise = _mean(_mean(self.latest[layer].get(_NOISE, [])) for layer in self.layers)
        bn_group = (self.feed.run_start or {}).get("bn_group")
        runs = "; ".join(f"run {run}: {s.data()['noise'][-1]:.4f}" for run, s in self.noise.items() if len(s))
        self.readout.object = (
            f'<div style="font-size:90%">{len(self.layers)} layers x {replicas} replicas at step '
            f'{max((s for s in steps if isinstance(s, int)), default="?")}'
            + (f", BN group {bn_group}" if bn_group is not None else "")
            + f" &middot; BN noise ({_NOISE}) now {noise:.4f}" + (f" &middot; latest per run: {runs}" if runs else "")
            + "</div>")

    def _draw_torus(self) -> None:
        replicas = max((r for g in self.groups for r in g), default=-1) + 1
        if not replicas:
            return
        torus = self.feed.torus
        if torus is None or torus[0] * torus[1] != replicas:
            torus = (1, replicas)  # no usable torus in the run start event: draw one row
        palette = colors(len(self.groups))
        group_of = {r: gi for gi, g in enumerate(self.groups) for r in g}
        data = {k: [] for k in self.torus.data}
        for r in range(replicas):
            i, j = divmod(r, torus[1])
            gi = group_of.get(r)
            data["x"].append(j)
            data["y"].append(i)
            data["replica"].append(r)
            data["group"].append(_group_label(gi) if gi is not None else "?")
            data["label"].append(f"{r}{_group_label(gi) if gi is not None else ''}")
            data["color"].append(palette[gi] if gi is not None else "#9ca3af")
        self.torus.data = data
        self.fig_torus.title.text = (f"BN groups on the {torus[0]}x{torus[1]} torus: {len(self.groups)} groups of "
                                     f"{max((len(g) for g in self.groups), default=0)}")

    def _refresh_metric(self) -> None:
        metric = self.metric.value
        self.fig_heat.title.text = f"{metric} at the latest captured step (replica x layer)"
        self.fig_replica.title.text = f"each replica's {metric}, mean over layers"
        self.color_bar.title = self._bar_title()
        for r, renderer in enumerate(self.fig_replica.renderers):  # the kept columns of that field: no gap
            renderer.glyph.y = _column(r, metric)
        if self.latest:
            self._draw_heatmap()


def bn_view(source=None, *, metric: str = _NOISE, period_ms: int = 500, live: bool = True) -> pn.Column:
    """Per-replica BN statistics, live: ``source`` is a source, EventStream, run directory or None."""
    feed = Feed(source, period_ms=period_ms)
    view = BNView(feed, metric=metric)
    return feed.page({"bn": view}, live=live)
