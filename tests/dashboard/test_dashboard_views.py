"""labkit.dashboard views: what the plots hold matches the events written (polled by hand, no server)."""
import math

import numpy as np
import panel as pn
import pytest

from tests.dashboard.dashboard_events import (ALGORITHMS, ALPHA, LAYERS, SIZES, bn_record, emit_bench, emit_full_run,
                              emit_run_start, emit_steps, loss_at, noise)
from labkit import telemetry
from labkit.dashboard import MemorySource, RunDirSource, bn_view, collective_view, input_view, overview, training_view
from labkit.mesh import Topology


@pytest.fixture
def stream():
    return telemetry.EventStream(host=0, capacity=1 << 18)


def test_training_view_plots_each_step_and_marks_time_to_accuracy(stream):
    page = overview(MemorySource(stream), live=False)
    emit_full_run(stream, steps=60)
    page.feed.poll()
    view = page.views["training"]
    data = view.steps.data()
    assert data["step"] == list(range(60))
    np.testing.assert_allclose(data["loss"], [loss_at(i) for i in range(60)])
    assert all(math.isnan(v) for v in data["images_per_s"][:2])  # compile steps are left out of images/s
    assert data["images_per_s"][2:] == [1000.0 + i for i in range(2, 60)]
    assert view.evals.data()["step"] == [20, 40]
    assert "(simulation)" in view.fig_ips.title.text
    # Target 75% is not reached by an eval (top-1 = step/100): the run end's time_to_accuracy_s is shown.
    assert view.tta == (pytest.approx(float("nan"), nan_ok=True), 12.5) and "12.5 s (simulation)" in view.tta_text.object
    view.target.value = 0.3  # the first eval at or above 30% is step 40
    assert view.tta[0] == 40 and view.tta_spans[0].visible and view.tta_spans[0].location == 40
    view.x_axis.value = "wall time"
    assert view.renderers[0].glyph.x == "t" and view.tta_spans[0].location == pytest.approx(view.tta[1])


def test_training_view_alone_reads_a_run_directory(tmp_path):
    writer = telemetry.EventStream(tmp_path, host=0)
    emit_full_run(writer, steps=10)
    writer.close()
    page = training_view(RunDirSource(tmp_path), live=False)
    assert page.views["training"].panel in page.objects
    assert page.views["training"].steps.data()["step"] == list(range(10))
    assert f"{tmp_path}: " in page.feed.status.object  # counters, no waiting message


def test_bn_view_heatmap_holds_the_latest_step_and_torus_shows_the_groups(stream):
    topo_groups = Topology.build(shape="2x4", bn_group=4).bn_groups()  # independent of the synthetic helper
    page = overview(MemorySource(stream), live=False)
    emit_run_start(stream, bn_group=4, torus=(2, 4))
    for step in (0, 5):
        for i, layer in enumerate(LAYERS):
            record = bn_record(i, layer, 4, 8)
            record["groups"] = topo_groups
            record["replica_vs_group"] = [step + 0.1 * i + 0.01 * r for r in range(8)]
            stream.emit("bn_stats", step=step, **record)
    page.feed.poll()
    view = page.views["bn"]
    view.metric.value = "replica_vs_group"  # the field this test fills (the default view is the BN noise)
    heat = view.heat.data
    assert len(heat["value"]) == 8 * len(LAYERS)
    for replica, layer, value in zip(heat["replica"], heat["layer"], heat["value"]):
        assert value == pytest.approx(5 + 0.1 * LAYERS.index(layer) + 0.01 * int(replica))  # step 5, not 0
    assert list(view.fig_heat.y_range.factors) == list(LAYERS)[::-1]  # first captured layer on top
    torus = view.torus.data
    assert [(x, y) for x, y in zip(torus["x"], torus["y"])] == [(r % 4, r // 4) for r in range(8)]
    color_groups = {}
    for replica, color in zip(torus["replica"], torus["color"]):
        color_groups.setdefault(color, []).append(replica)
    assert sorted(color_groups.values()) == sorted(topo_groups)
    assert "2x4 torus: 2 groups of 4" in view.fig_torus.title.text
    view.metric.value = "replica_vs_running"
    assert view.heat.data["value"] == view.heat.data["replica_vs_running"]


def test_bn_noise_is_one_line_per_run_and_shrinks_with_a_larger_bn_group(stream):
    page = bn_view(MemorySource(stream), live=False)
    for bn_group in (2, 8):
        emit_run_start(stream, bn_group=bn_group)
        emit_steps(stream, 0, 30, bn_group=bn_group)
        stream.emit("run", phase="end")
    page.feed.poll()
    bn = page.views["bn"]
    assert sorted(bn.noise) == [1, 2]
    np.testing.assert_allclose(bn.noise[1].data()["noise"], [noise(2)] * 6)
    np.testing.assert_allclose(bn.noise[2].data()["noise"], [noise(8)] * 6)
    labels = [item.label.value for item in bn.fig_noise.legend[0].items]
    assert labels == ["run 1: bn_group 2", "run 2: bn_group 8"]
    assert bn.panel in page.objects


def test_input_view_counts_input_bound_steps_and_skipped_records_per_host(stream):
    page = input_view(MemorySource(stream), live=False)
    emit_run_start(stream)
    emit_steps(stream, 0, 40, hosts=2)
    page.feed.poll()
    view = next(iter(page.views.values()))
    assert sorted(view.hosts) == [0, 1]
    assert view.hosts[1].data()["depth"] == [float((i + 1) % 9) for i in range(40)]
    bound = view.bound.data
    assert bound["host"] == ["host 0", "host 1"]
    expected = [sum((i + h) % 4 == 0 for i in range(40)) / 40 for h in (0, 1)]
    assert bound["whole_run"] == pytest.approx(expected)
    assert bound["skipped"] == [39 // 10, 39 // 10]
    assert "skipped records" in view.readout.object


def test_collective_view_plots_measured_points_and_the_cost_model_curves(stream):
    page = collective_view(MemorySource(stream), live=False)
    emit_run_start(stream)
    emit_bench(stream)
    emit_steps(stream, 0, 10)
    page.feed.poll()
    view = next(iter(page.views.values()))
    points = view.points.data
    assert len(points["bytes"]) == len(ALGORITHMS) * len(SIZES)
    colors = {a: {c for a2, c in zip(points["algorithm"], points["color"]) if a2 == a} for a in ALGORITHMS}
    assert all(len(c) == 1 for c in colors.values()) and len(set.union(*colors.values())) == len(ALGORITHMS)
    curves = view.curves.data
    assert curves["algorithm"] == list(ALGORITHMS) and all(xs == SIZES for xs in curves["xs"])
    assert curves["ys"][0] == pytest.approx([ALPHA["ring"] + 1e-9 * s for s in SIZES])
    assert view.train["torus_2d"].data()["time_s"] == pytest.approx([0.001 + i * 1e-6 for i in range(10)])
    assert view.fig_time.x_scale.__class__.__name__ == "LogScale"
    assert "alpha 20.0 us" in view.readout.object


def test_bad_events_are_skipped_and_counted_never_fatal(stream, monkeypatch):
    page = overview(MemorySource(stream), live=False)
    stream.emit("run", phase="start", torus="2x4", replicas="eight")  # malformed: the torus falls back to a row
    stream.emit("step", step=0, loss="not a number", accuracy=None)
    stream.emit("bn_stats", step=0, layer="l", groups="all", replica_vs_group=[1, "x"])
    stream.emit("collective", algorithm="ring", bytes=-5, time_s=0.0)
    stream.emit("cost_model", algorithm="ring", bytes="many", time_s=None)
    stream.emit("input_queue", step=0, host="h", depth=None, input_bound="yes")
    monkeypatch.setitem(telemetry.KINDS, "mystery", "a kind from a newer writer")
    stream.emit("mystery", step=1)
    monkeypatch.delitem(telemetry.KINDS, "mystery")  # this reader does not know it
    page.feed.poll()
    assert page.feed.view_errors == 0, page.feed.last_error
    assert page.feed.reader.unknown_kinds == {"mystery": 1}
    assert "unknown kind" in page.feed.status.object
    assert math.isnan(page.views["training"].steps.data()["loss"][0])
    assert page.views["collectives"].points.data["bytes"] == []


def test_overview_shows_a_waiting_message_for_an_unknown_run_dir_and_places_controls(tmp_path):
    start = pn.widgets.Button(label="start training")
    page = overview(tmp_path / "nope", controls=[start], live=False)
    assert "does not exist" in page.feed.status.object
    status = page.feed.status.object  # plain text: nothing that needs an emoji font (it was an hourglass)
    assert "waiting: run directory" in status and "&#" not in status and status.isascii()
    assert start in page[0].objects
    with pytest.raises(ValueError, match="allowed"):
        overview(tmp_path, views=("training", "gpu"), live=False)


def test_a_100k_step_run_stays_bounded(stream):
    page = training_view(MemorySource(stream), live=False, max_points=1000)
    for i in range(100_000):
        stream.emit("step", step=i, loss=1.0 / (1 + i), accuracy=0.5, lr=0.1, images_per_s=100.0)
    page.feed.poll()
    view = next(iter(page.views.values()))
    assert view.steps.rows_in == 100_000
    assert len(view.steps.source.data["step"]) < 1000
    assert view.steps.source.data["step"][-1] >= 100_000 - view.steps.stride  # the whole run is covered



def test_benchmark_events_label_their_own_timings_as_simulation(stream):
    page = collective_view(MemorySource(stream), live=False)
    view = page.views["collectives"]
    stream.emit("collective", algorithm="ring", bytes=1024, time_s=1e-4, algbw=1e7, busbw=1.75e7, replicas=8,
                source="bench", simulated=False)
    page.feed.poll()
    assert "(simulation)" not in view.fig_time.title.text  # no run start event, and the events say hardware
    stream.emit("collective", algorithm="ring", bytes=4096, time_s=2e-4, algbw=2e7, busbw=3.5e7, replicas=8,
                source="bench", simulated=True)
    page.feed.poll()
    assert all("(simulation)" in f.title.text for f in view.figures)


def test_the_run_config_sets_the_time_to_accuracy_target(stream):
    page = training_view(MemorySource(stream), live=False)
    emit_run_start(stream, config={"target_accuracy": 0.97})
    stream.emit("eval", step=10, top1=0.96)
    stream.emit("eval", step=20, top1=0.975)
    page.feed.poll()
    view = page.views["training"]
    assert view.target.value == 0.97 and view.tta[0] == 20
    assert "97.0% top-1" in view.tta_text.object


def _figures(page):
    from bokeh.plotting import figure as Figure
    return [f for view in page.views.values() for f in vars(view).values() if isinstance(f, Figure)]


def test_every_plot_has_axis_labels_and_its_legend_beside_the_data(stream):
    from bokeh.models import Legend
    page = overview(MemorySource(stream), live=False)
    emit_full_run(stream, steps=30)
    page.feed.poll()
    figures = _figures(page)
    assert len(figures) >= 4 + 4 + 4 + 3  # training, bn, input, collectives (and any newer view)
    for fig in figures:
        assert fig.xaxis[0].axis_label and fig.yaxis[0].axis_label, fig.title.text
        assert not [r for r in fig.center if isinstance(r, Legend)], fig.title.text  # never over the data
    bn = page.views["bn"]
    legend = bn.fig_replica.legend[0]
    assert legend.title == "colour = BN group"
    assert [item.label.value for item in legend.items] == ["group A: replicas 0,1", "group B: replicas 2,3",
                                                           "group C: replicas 4,5", "group D: replicas 6,7"]
    assert [len(item.renderers) for item in legend.items] == [2, 2, 2, 2]
    assert bn.color_bar.title == "group_vs_running (relative deviation)"  # the default: the noise g controls
    bn.metric.value = "replica_vs_group"
    assert bn.color_bar.title == "replica_vs_group (relative deviation)"


def test_switching_the_deviation_redraws_a_finished_runs_plot(stream):
    page = bn_view(MemorySource(stream), metric="replica_vs_group", live=False)
    emit_run_start(stream, bn_group=2)
    emit_steps(stream, 0, 30, bn_group=2)
    stream.emit("run", phase="end")
    page.feed.poll()
    bn = page.views["bn"]
    data = bn.per_replica.data()
    shown = lambda: [data[r.glyph.y] for r in bn.fig_replica.renderers]  # noqa: E731
    before = shown()
    # replica r's replica_vs_group, mean over the 3 layers: 0.01 * (1 + 2 + 3) / 3 * (1 + r % 2)
    np.testing.assert_allclose(before[3], [0.02 * 2] * 6)
    bn.metric.value = "group_vs_running"  # the run is over: nothing new will arrive
    after = shown()
    assert len(after[0]) == 6 and np.allclose(after, noise(2))
    bn.metric.value = "replica_vs_group"
    assert shown() == before


def test_implausible_values_are_skipped_counted_and_never_stretch_an_axis(stream):
    page = overview(MemorySource(stream), live=False)
    emit_run_start(stream)
    emit_steps(stream, 0, 10)
    stream.emit("step", step=10, loss=float("nan"), accuracy=0.5, lr=0.1, images_per_s=1e30)
    stream.emit("bn_stats", step=10, **{**bn_record(0, "stage9/not_a_layer", 2, 8)})
    stream.emit("bn_stats", step=10, **{**bn_record(0, LAYERS[0], 2, 8), "replica_vs_group": [float("inf")] * 8})
    stream.emit("collective", step=10, algorithm="torus_2d", bytes=80000, time_s=1e30, source="train")
    page.feed.poll()
    steps = page.views["training"].steps.data()
    assert math.isnan(steps["loss"][-1]) and math.isnan(steps["images_per_s"][-1])
    assert max(v for v in steps["images_per_s"] if v == v) == 1009.0
    assert page.views["bn"].layers == list(LAYERS)  # the unknown layer made no heatmap row
    assert page.views["bn"].mapper.high < 1  # the colour scale is not stretched by inf
    assert max(page.views["collectives"].train["torus_2d"].data()["time_s"][:-1]) < 1
    assert dict(page.feed.bad_values) == {"loss": 1, "images_per_s": 1, "bn_stats layer": 1,
                                          "replica_vs_group": 8, "time_s": 1}
    assert "12 implausible values skipped" in page.feed.status.object
    assert page.feed.view_errors == 0


def test_time_to_accuracy_and_images_per_s_are_the_loops_own_fields(stream):
    page = overview(MemorySource(stream), live=False)
    emit_run_start(stream, config={"target_accuracy": 0.5})
    for i in range(5):  # the events' own clock (wall_s) differs from the page's: the page must not use its own
        stream.emit("step", step=i, loss=1.0, accuracy=0.5, lr=0.1, images_per_s=300.0 + i, wall_s=10.0 + i,
                    compile=i == 0)
    stream.emit("eval", step=5, top1=0.6, top5=0.9, wall_s=62.8, time_to_accuracy_s=62.8)
    stream.emit("run", phase="end", stopped="target", top1=0.6, time_to_accuracy_s=62.8, images_per_s=309.0,
                images_per_s_wall=250.0, wall_time_s=70.0, simulated=True)
    page.feed.poll()
    view = page.views["training"]
    assert "time to 50.0% top-1: 62.8 s (simulation)" in view.tta_text.object and view.tta == (5, 62.8)
    assert "62.8" in page.feed.run_info.object and "309 images/s steady" in page.feed.run_info.object
    assert "304 images/s steady since the last log point" in view.readout.object  # the last step, as reported
    assert view.steps.data()["t"] == [10.0, 11.0, 12.0, 13.0, 14.0]  # the wall-time axis is the loop's wall_s


def test_a_resumed_run_shows_its_whole_history(stream):
    page = overview(MemorySource(stream), live=False)
    emit_run_start(stream, resumed_from=0)
    emit_steps(stream, 0, 20)
    emit_run_start(stream, resumed_from=20)  # the process was interrupted and resumed from step 20
    emit_steps(stream, 20, 40)
    page.feed.poll()
    assert page.views["training"].steps.data()["step"] == list(range(40))
    assert page.views["collectives"].train["torus_2d"].data()["step"] == list(range(40))
    assert len(page.views["input"].hosts[0]) == 40
    assert sorted(page.views["bn"].noise) == [1] and len(page.views["bn"].noise[1]) == 8
    assert page.feed.runs == 1


def test_size_and_cost_model_plots_say_what_to_run(tmp_path):
    writer = telemetry.EventStream(tmp_path, host=0)
    emit_run_start(writer)
    emit_steps(writer, 0, 5)
    writer.close()
    page = collective_view(RunDirSource(tmp_path), live=False)
    view = page.views["collectives"]
    assert all(label.visible for label in view._bench_waiting)
    assert f"labkit bench collectives --workdir {tmp_path}" in view._bench_waiting[0].text
    assert not view._waiting.visible  # the per-step plot has the run's own points


def test_a_static_snapshot_disables_its_controls(stream):
    page = overview(MemorySource(stream), live=False, static=True)
    widgets = list(page.select(pn.widgets.Widget))
    assert len(widgets) >= 3 and all(w.disabled for w in widgets)
    assert "static snapshot: the controls are disabled" in str([o.object for o in page.select(pn.pane.HTML)])
    assert not any(w.disabled for w in overview(MemorySource(stream), live=False).select(pn.widgets.Widget))
