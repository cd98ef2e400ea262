"""labkit.train.demo: the first distributed run: the loss falls and BN statistics reach telemetry."""
import pytest

from labkit import bn
from labkit.mesh import Topology
from labkit.telemetry import EventStream, read_events
from labkit.train.demo import run_demo


def test_loss_falls_and_bn_stats_reach_telemetry(tmp_path):
    topo = Topology.build(shape=(2, 4), bn_group=2)
    stream = EventStream(tmp_path, host=0)
    summary = run_demo(topo, steps=12, bn_stats_every=5, stream=stream, log=None)
    stream.close()
    assert summary["last_loss"] < 0.9 * summary["first_loss"]
    events, skipped = read_events(tmp_path)
    assert skipped == 0
    steps = [e for e in events if e["kind"] == "step"]
    assert [e["step"] for e in steps] == list(range(12))
    assert [e["loss"] for e in steps][-1] == pytest.approx(summary["last_loss"])
    bn_events = [e for e in events if e["kind"] == "bn_stats"]
    assert sorted({e["step"] for e in bn_events}) == [0, 5, 10]
    layers = {e["layer"] for e in bn_events}
    assert "bn_init" in layers and len(layers) == 9  # stem + 3 blocks x 2 + projections in stages 2 and 3
    for e in bn_events:
        assert e["groups"] == topo.bn_groups()
        assert all(len(e[f]) == 8 for f in bn.BN_STAT_FIELDS)
        # replicas of one group share the group's statistics
        for g in e["groups"]:
            assert len({round(e["group_mean"][r], 6) for r in g}) == 1
    run = [e for e in events if e["kind"] == "run"]
    assert [e["phase"] for e in run] == ["start", "end"] and run[0]["bn_group"] == 2


def test_batch_not_divisible_is_a_clear_error():
    with pytest.raises(ValueError, match="batch_size: 100 is not divisible by the 8 replicas"):
        run_demo(Topology.build(), batch_size=100, log=None)
