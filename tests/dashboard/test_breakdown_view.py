"""labkit.dashboard.breakdown_view: the stacked bars hold the milliseconds of each step_breakdown event."""
import pytest

from labkit import telemetry
from labkit.dashboard import MemorySource, overview
from labkit.dashboard.breakdown_view import CATEGORIES, breakdown_view


def _breakdown(scale):
    seconds = {c: scale * (k + 1) * 1e-3 for k, c in enumerate(CATEGORIES)}  # 1, 2, ... 7 ms times scale
    total = sum(seconds.values())
    return {"step_s": total, "seconds": seconds, "fractions": {c: v / total for c, v in seconds.items()},
            "model": "resnet_tiny", "global_batch": 64, "bn_group": 2, "allreduce": "torus2d", "simulated": True}


def test_overview_shows_each_breakdown_as_a_stacked_bar():
    from labkit import profile
    assert CATEGORIES == profile.CATEGORIES  # the view's copy of the categories stays in step with labkit.profile
    stream = telemetry.EventStream(host=0)
    page = overview(MemorySource(stream), live=False)
    view = page.views["breakdown"]
    assert view._waiting.visible
    profile.emit_breakdown(_breakdown(1.0), stream)
    profile.emit_breakdown(dict(_breakdown(2.0), bn_group=8), stream)
    stream.emit("step_breakdown", seconds={c: 0.0 for c in CATEGORIES})  # nothing measured: skipped, counted
    page.feed.poll()
    data = view.source.data
    assert data["label"] == ["#1 resnet_tiny batch 64 g=2 torus2d", "#2 resnet_tiny batch 64 g=8 torus2d"]
    for k, c in enumerate(CATEGORIES):
        assert data[c] == pytest.approx([(k + 1) * 1.0, (k + 1) * 2.0])
    assert data["step_ms"] == pytest.approx([28.0, 56.0])
    assert not view._waiting.visible and "(simulation)" in view.fig.title.text
    assert "56.00 ms per step" in view.readout.object and "host 25%" in view.readout.object  # 7/28


def test_breakdown_view_alone_reads_a_run_directory(tmp_path):
    stream = telemetry.EventStream(tmp_path, host=0)
    stream.emit("step_breakdown", **_breakdown(1.0))
    stream.close()
    page = breakdown_view(str(tmp_path), live=False)
    page.feed.poll()
    assert page.views["breakdown"].source.data["compute"] == pytest.approx([1.0])
