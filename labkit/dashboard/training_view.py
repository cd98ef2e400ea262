"""dashboard.training_view: loss, learning rate, accuracy and images/s of the current run, live.

Owns the training panel: ``step`` events as lines over steps or the loop's wall seconds (a toggle), ``eval``
events as points, and the time-to-accuracy marker. Time to accuracy and images/s are the loop's own fields
(``time_to_accuracy_s`` of the eval / run-end events, ``images_per_s`` of step events and the run end), shown as
reported; for a target other than the run's, the marker sits at the first evaluation at or above it. Compile
steps are left out of images/s. Timings are labelled simulation when the run says so.
Must not: compute metrics the training loop reports (it only reads and downsamples them for display).
"""
from __future__ import annotations

import math

import panel as pn
from bokeh.models import Span

from labkit.dashboard.feed import Feed, number
from labkit.dashboard.series import Series
from labkit.dashboard.style import flow_row, new_figure, note, plot_grid

__all__ = ["TrainingView", "training_view"]

_TARGET_FIELDS = ("target_top1", "target_accuracy", "target")  # where a run start may state its target
_DEFAULT_TARGET = 0.75
_X = {"step": ("step", "step"), "wall time": ("t", "wall time since the run's first start (s)")}
_MAX_IMAGES_PER_S = 1e9  # more than any machine: a larger value is a broken record, skipped and counted


class TrainingView:
    """The training panel of one ``Feed``; ``panel`` is the Panel layout."""

    kinds = ("step", "eval")

    def __init__(self, feed: Feed, *, max_points: int = 2000):
        self.feed = feed
        self.steps = Series(("step", "t", "loss", "accuracy", "lr", "images_per_s"), max_points=max_points,
                            last_columns=("step", "t"))
        self.evals = Series(("step", "t", "top1", "top5"), max_points=max_points, last_columns=("step", "t"))
        self.target = pn.widgets.FloatInput(label="target top-1", value=_DEFAULT_TARGET, start=0.0, end=1.0,
                                            step=0.01, width=110)
        self.x_axis = pn.widgets.RadioButtonGroup(options=list(_X), value="step", width=170)
        self.readout = note("no step events yet: a training run reports one per step")
        self.tta_text = note("")
        self.tta: tuple[float, float] | None = None  # (step, seconds) where the target was first reached
        self.reported_tta: tuple[float, float] | None = None  # (step, time_to_accuracy_s) from an eval event
        self.run_target: float | None = None
        self._latest: dict | None = None
        self._build_figures()
        self.target.param.watch(lambda _e: self._update_tta(), "value")
        self.x_axis.param.watch(lambda _e: self._switch_x(), "value")
        self.panel = pn.Column(
            flow_row(pn.pane.HTML("<b>Training</b>", margin=(12, 10, 0, 10)), self.x_axis, self.target),
            self.readout, self.tta_text,
            plot_grid(*self.figures),
            sizing_mode="stretch_width")
        feed.subscribe(self)

    def _build_figures(self) -> None:
        src, ev = self.steps.source, self.evals.source
        self.fig_loss = new_figure("loss", x_axis_label="step", y_axis_label="loss (cross-entropy)")
        self.fig_acc = new_figure("accuracy: train (line), eval top-1 (dots)", x_axis_label="step",
                                  y_axis_label="accuracy (fraction)")
        self.fig_lr = new_figure("learning rate", x_axis_label="step", y_axis_label="learning rate")
        self.fig_ips = new_figure(self.feed.timing_label("images/s (compile steps left out)"), x_axis_label="step",
                                  y_axis_label="images/s")
        self.renderers = [
            self.fig_loss.line("step", "loss", source=src, line_width=2, color="#1f77b4"),
            self.fig_acc.line("step", "accuracy", source=src, line_width=2, color="#2ca02c"),
            self.fig_acc.scatter("step", "top1", source=ev, size=7, color="#d62728"),
            self.fig_lr.line("step", "lr", source=src, line_width=2, color="#9467bd"),
            self.fig_ips.line("step", "images_per_s", source=src, line_width=2, color="#ff7f0e"),
        ]
        self.target_line = Span(location=self.target.value, dimension="width", line_dash="dotted",
                                line_color="#d62728")
        self.fig_acc.add_layout(self.target_line)
        self.tta_spans = [Span(location=0, dimension="height", line_color="#d62728", line_width=2,
                               line_dash="dashed", visible=False) for _ in range(2)]
        self.fig_acc.add_layout(self.tta_spans[0])
        self.fig_loss.add_layout(self.tta_spans[1])
        self.figures = [self.fig_loss, self.fig_acc, self.fig_lr, self.fig_ips]

    # --- feed callbacks --------------------------------------------------------------------------------------
    def on_run(self, event: dict) -> None:
        if event.get("phase") == "end":
            self._update_tta()
            return
        if not self.feed.continues(event):  # a resumed run keeps its history on the page
            self.steps.clear()
            self.evals.clear()
            self._latest, self.reported_tta = None, None
        self.fig_ips.title.text = self.feed.timing_label("images/s (compile steps left out)")
        config = event.get("config") if isinstance(event.get("config"), dict) else {}
        for field in _TARGET_FIELDS:  # the run's own target (top level or in its config) wins over the default
            value = number(event, field) if field in event else number(config, field)
            if 0 < value <= 1:
                self.target.value = self.run_target = value
                break
        self._update_tta()

    def on_events(self, by_kind: dict[str, list[dict]]) -> None:
        steps = by_kind.get("step", [])
        value = self.feed.value
        if steps:
            self.steps.extend({
                "step": [number(e, "step") for e in steps],
                "t": [self.feed.wall(e) for e in steps],
                "loss": [value(e, "loss", 0.0) for e in steps],
                "accuracy": [value(e, "accuracy", 0.0, 1.0) for e in steps],
                "lr": [value(e, "lr", 0.0) for e in steps],
                "images_per_s": [float("nan") if e.get("compile") else value(e, "images_per_s", 0.0, _MAX_IMAGES_PER_S)
                                 for e in steps],
            })
            self._latest = steps[-1]
            self._update_readout()
        evals = by_kind.get("eval", [])
        if evals:
            self.evals.extend({"step": [number(e, "step") for e in evals], "t": [self.feed.wall(e) for e in evals],
                               "top1": [value(e, "top1", 0.0, 1.0) for e in evals],
                               "top5": [value(e, "top5", 0.0, 1.0) for e in evals]})
            for e in evals:  # the loop says when its target was reached: the first eval carrying the time
                tta = number(e, "time_to_accuracy_s")
                if self.reported_tta is None and math.isfinite(tta):
                    self.reported_tta = (number(e, "step"), tta)
            self._update_tta()

    # --- display ---------------------------------------------------------------------------------------------
    def _update_readout(self) -> None:
        e = self._latest
        parts = [f"step {e.get('step')}"]
        for field, fmt in (("loss", ".4f"), ("accuracy", ".3f"), ("lr", ".4g")):
            v = number(e, field)
            if math.isfinite(v):
                parts.append(f"{field} {v:{fmt}}")
        v = number(e, "images_per_s")
        if math.isfinite(v) and 0 < v <= _MAX_IMAGES_PER_S and not e.get("compile"):
            parts.append(f"{v:,.0f} images/s steady since the last log point"
                         + (" (simulation)" if self.feed.simulated else ""))
        if self.steps.stride > 1:
            parts.append(f"plots show means of {self.steps.stride} steps per point")
        self.readout.object = f'<div style="font-size:90%">{" &middot; ".join(parts)}</div>'

    def _update_tta(self) -> None:
        target = float(self.target.value or _DEFAULT_TARGET)
        self.target_line.location = target
        data = self.evals.data()
        self.tta = None
        first = next(((step, t) for step, t, top1 in zip(data["step"], data["t"], data["top1"]) if top1 >= target),
                     None)
        end = self.feed.run_end or {}
        reported = number(end, "time_to_accuracy_s")
        sim = " (simulation)" if self.feed.simulated else ""
        own_target = self.run_target is None or abs(target - self.run_target) < 1e-9
        if own_target and self.reported_tta is not None:  # the loop's time_to_accuracy_s, as reported
            step, seconds = self.reported_tta
            self.tta = (step, first[1] if first and first[0] == step else seconds)
            text = (f"time to {target:.1%} top-1: {seconds:,.1f} s{sim}, wall time from the first start "
                    f"(the loop's time_to_accuracy_s), step {step:,.0f}")
        elif own_target and math.isfinite(reported):
            self.tta = (first[0] if first else float("nan"), first[1] if first else reported)
            text = f"time to accuracy (reported at run end): {reported:,.1f} s{sim}, wall time from the first start"
        elif first is not None:
            self.tta = first
            text = f"first eval at or above {target:.1%} top-1: step {first[0]:,.0f}"
        elif data["top1"]:
            best = max(range(len(data["top1"])), key=lambda i: data["top1"][i])
            text = (f"{target:.1%} top-1 not reached yet: best eval {data['top1'][best]:.1%} "
                    f"at step {data['step'][best]:,.0f}")
        else:
            text = f"time-to-accuracy marker: waiting for eval events (target {target:.1%} top-1)"
        self.tta_text.object = f'<div style="color:#b91c1c;font-size:90%">{text}</div>'
        self._place_tta()

    def _place_tta(self) -> None:
        column = _X[self.x_axis.value][0]
        where = None if self.tta is None else (self.tta[0] if column == "step" else self.tta[1])
        for span in self.tta_spans:
            span.visible = where is not None and math.isfinite(where)
            if span.visible:
                span.location = where

    def _switch_x(self) -> None:
        column, label = _X[self.x_axis.value]
        for renderer in self.renderers:
            renderer.glyph.x = column
        for fig in self.figures:
            fig.xaxis.axis_label = label
        self._place_tta()


def training_view(source=None, *, period_ms: int = 500, live: bool = True, max_points: int = 2000) -> pn.Column:
    """Loss, lr, accuracy and images/s of a run, live: ``source`` is a source, EventStream, run dir or None."""
    feed = Feed(source, period_ms=period_ms)
    view = TrainingView(feed, max_points=max_points)
    return feed.page({"training": view}, live=live)
