"""dashboard.collective_view: all-reduce timing, live: time and bus bandwidth against payload, per algorithm.

Owns the collectives panel, fed by ``collective`` events (algorithm, bytes, time_s, algbw, busbw, replicas,
source 'bench' | 'train') and ``cost_model`` events (a fitted model's predicted curve as lists bytes / time_s):
measured time and busbw against payload size on log axes, one colour per algorithm, the cost-model curves drawn
over the measured points, and the per-step gradient all-reduce time of a training run.
Must not: time collectives or evaluate a cost model (``labkit.collectives`` does); it plots what was reported.
"""
from __future__ import annotations

import math

import panel as pn
from bokeh.models import ColumnDataSource

from labkit.dashboard.feed import Feed, number, to_float
from labkit.dashboard.series import Series
from labkit.dashboard.style import colors, new_figure, note, outside_legend, plot_grid, waiting_label

__all__ = ["CollectiveView", "collective_view"]

_POINT_COLUMNS = ("bytes", "time_s", "busbw", "algbw", "algorithm", "replicas", "color")


_MAX_SECONDS = 1e5  # one collective taking more than a day is a broken record, skipped and counted


def _positive(v: float) -> bool:
    return math.isfinite(v) and v > 0


class CollectiveView:
    """The collective-timing panel of one ``Feed``; ``panel`` is the Panel layout."""

    kinds = ("collective", "cost_model")

    def __init__(self, feed: Feed, *, max_points: int = 5000, max_steps: int = 2000):
        self.feed = feed
        self.max_points = max_points
        self.max_steps = max_steps
        self.algorithms: list[str] = []
        self.models: dict[str, dict] = {}      # algorithm -> latest cost_model event
        self.train: dict[str, Series] = {}     # algorithm -> per-step all-reduce time during training
        self.bench_count = 0
        self.simulated = False  # benchmark events say so themselves (a benchmark has no run start event)
        self.readout = note("no collective events yet: <code>labkit bench collectives</code> and training runs "
                            "report them")
        self.points = ColumnDataSource(data={c: [] for c in _POINT_COLUMNS})
        self.curves = ColumnDataSource(data={c: [] for c in ("xs", "ys", "algorithm", "color", "alpha_s",
                                                             "beta_s_per_byte")})
        self._build_figures()
        self.panel = pn.Column(
            pn.pane.HTML("<b>Collective timing</b>", margin=(12, 10, 0, 10)), self.readout,
            plot_grid(*self.figures, basis=380, share=30),
            sizing_mode="stretch_width")
        feed.subscribe(self)

    def _build_figures(self) -> None:
        tips = [("algorithm", "@algorithm"), ("bytes", "@bytes{0,0}"), ("time", "@time_s s"),
                ("busbw", "@busbw{0.00a}B/s"), ("replicas", "@replicas")]
        self.fig_time = new_figure(self.feed.timing_label("all-reduce time vs payload (lines: cost model)"),
                                   x_axis_type="log", y_axis_type="log", x_axis_label="bytes per replica",
                                   y_axis_label="seconds", tooltips=tips)
        outside_legend(self.fig_time)
        self.fig_time.multi_line("xs", "ys", source=self.curves, color="color", line_width=2, line_dash="dashed")
        self.fig_time.scatter("bytes", "time_s", source=self.points, color="color", size=7,
                              legend_field="algorithm")
        self.fig_bw = new_figure(self.feed.timing_label("bus bandwidth vs payload"), x_axis_type="log",
                                 y_axis_type="log", x_axis_label="bytes per replica", y_axis_label="busbw (B/s)",
                                 tooltips=tips)
        outside_legend(self.fig_bw)
        self.fig_bw.scatter("bytes", "busbw", source=self.points, color="color", size=7, legend_field="algorithm")
        self.fig_train = new_figure(self.feed.timing_label("gradient all-reduce time per training step"),
                                    x_axis_label="step", y_axis_label="seconds")
        outside_legend(self.fig_train)
        self.figures = [self.fig_time, self.fig_bw, self.fig_train]
        self._waiting = waiting_label(self.fig_train, "waiting for collective events with source='train' "
                                      "(config collective_every_steps)")
        where = getattr(self.feed.source, "run_dir", None)
        self.bench_hint = ("no measured sizes yet: run  labkit bench collectives --workdir "
                           f"{where if where is not None else 'RUNDIR'}  to add them and the fitted cost model")
        self._bench_waiting = [waiting_label(fig, self.bench_hint) for fig in (self.fig_time, self.fig_bw)]
        for label in self._bench_waiting:
            label.y = 40

    def _color(self, algorithm: str) -> str:
        if algorithm not in self.algorithms:
            self.algorithms.append(algorithm)
        return colors(10)[self.algorithms.index(algorithm) % 10]

    def _label(self, title: str) -> str:
        return f"{title} (simulation)" if self.simulated or self.feed.simulated else title

    def _relabel(self) -> None:
        for fig, title in ((self.fig_time, "all-reduce time vs payload (lines: cost model)"),
                           (self.fig_bw, "bus bandwidth vs payload"),
                           (self.fig_train, "gradient all-reduce time per training step")):
            fig.title.text = self._label(title)

    def on_run(self, event: dict) -> None:
        if event.get("phase") == "end" or self.feed.continues(event):  # a resume keeps the history
            return
        for series in self.train.values():  # per-step times belong to one run; benchmark points accumulate
            series.clear()
        self._relabel()

    def on_events(self, by_kind: dict[str, list[dict]]) -> None:
        if not self.simulated and any(e.get("simulated") is True for events in by_kind.values() for e in events):
            self.simulated = True
            self._relabel()
        bench = {c: [] for c in _POINT_COLUMNS}
        train: dict[str, list[dict]] = {}
        for e in by_kind.get("collective", []):
            algorithm = str(e.get("algorithm", "?"))
            if e.get("source") == "train":
                train.setdefault(algorithm, []).append(e)
                continue
            size, t = self.feed.value(e, "bytes", 0.0), self.feed.value(e, "time_s", 0.0, _MAX_SECONDS)
            if not (_positive(size) and _positive(t)):
                continue  # a log axis cannot show it
            for c in ("bytes", "time_s", "busbw", "algbw", "replicas"):
                bench[c].append(self.feed.value(e, c, 0.0))
            bench["algorithm"].append(algorithm)
            bench["color"].append(self._color(algorithm))
        if bench["bytes"]:
            for label in self._bench_waiting:
                label.visible = False
            self.bench_count += len(bench["bytes"])
            self.points.stream(bench, rollover=self.max_points)
        for algorithm, events in train.items():
            self._train_series(algorithm).extend({"step": [number(e, "step") for e in events],
                                                  "time_s": [self.feed.value(e, "time_s", 0.0, _MAX_SECONDS)
                                                             for e in events]})
        models = by_kind.get("cost_model", [])
        for e in models:
            if isinstance(e.get("bytes"), list) and isinstance(e.get("time_s"), list):
                self.models[str(e.get("algorithm", "?"))] = e
        if models:
            self._draw_models()
        self._update_readout()

    def _train_series(self, algorithm: str) -> Series:
        if algorithm not in self.train:
            self._waiting.visible = False
            self.train[algorithm] = Series(("step", "time_s"), max_points=self.max_steps, last_columns=("step",))
            self.fig_train.line("step", "time_s", source=self.train[algorithm].source, line_width=1.5,
                                color=self._color(algorithm), legend_label=algorithm)
        return self.train[algorithm]

    def _draw_models(self) -> None:
        data = {c: [] for c in self.curves.data}
        for algorithm, e in self.models.items():
            pairs = [(to_float(b), to_float(t)) for b, t in zip(e["bytes"], e["time_s"])]
            pairs = [(b, t) for b, t in pairs if _positive(b) and _positive(t)]
            data["xs"].append([b for b, _ in pairs])
            data["ys"].append([t for _, t in pairs])
            data["algorithm"].append(algorithm)
            data["color"].append(self._color(algorithm))
            data["alpha_s"].append(number(e, "alpha_s"))
            data["beta_s_per_byte"].append(number(e, "beta_s_per_byte"))
        self.curves.data = data

    def _update_readout(self) -> None:
        parts = []
        if self.bench_count:
            parts.append(f"{self.bench_count:,} measured points over {len(self.algorithms)} algorithm(s)")
        for algorithm, e in self.models.items():
            alpha, beta = number(e, "alpha_s"), number(e, "beta_s_per_byte")
            fit = f"alpha {alpha * 1e6:,.1f} us, 1/beta {1 / beta / 1e9:,.2f} GB/s" if _positive(beta) else "fitted"
            parts.append(f"cost model {algorithm}: {fit}")
        for algorithm, series in self.train.items():
            times = [t for t in series.data()["time_s"] if math.isfinite(t)]
            if times:
                parts.append(f"training {algorithm}: last {times[-1] * 1e3:,.2f} ms/step")
        if parts:
            sim = " (simulation)" if self.simulated or self.feed.simulated else ""
            self.readout.object = f'<div style="font-size:90%">{" &middot; ".join(parts)}{sim}</div>'


def collective_view(source=None, *, period_ms: int = 500, live: bool = True) -> pn.Column:
    """Collective timing and cost models, live: ``source`` is a source, EventStream, run directory or None."""
    feed = Feed(source, period_ms=period_ms)
    view = CollectiveView(feed)
    return feed.page({"collectives": view}, live=live)
