"""labkit.collectives.project: the pod projection against the published formula computed here in numpy, the
no-fitting property, the sensitivity sweep and the communication fraction against chip count."""
import copy
import dataclasses

import numpy as np
import pytest

from labkit.collectives import project as pj

PARAMS = 25_557_032  # ResNet-50 (paper-facts.md §3)


def _channels():
    # ResNet-50 v1.5 BN layers, written out: stem; per stage (planes, planes, 4 planes) x blocks + projection
    return np.array([64] + [64, 64, 256] * 3 + [256] + [128, 128, 512] * 4 + [512]
                    + [256, 256, 1024] * 6 + [1024] + [512, 512, 2048] * 3 + [2048], np.float64)


def _reference_step(chips, batch, rate, alpha, bw, g, *, side=32):
    """The model's published formula, in float64: compute = batch / chips / rate; the bidirectional 2-D
    all-reduce on a side x side torus with wrap-around and two counter-rotating rings (each half: a ring phase
    over one dimension, then over the other on 1/side of it; reduce-scatter + all-gather); BN (chan form): a
    layer does one all-gather of 2 floats a channel from each of g replicas ((g-1) hops, (g-1) x 8c bytes) and
    one psum of 2 floats ((2(g-1)) hops, 2(g-1)/g x 8c bytes), on a line of g replicas (one direction)."""
    s = 4.0 * PARAMS
    h = s / 2
    k = side
    p1 = (k - 1) * alpha + (k - 1) * h / k / (2 * bw)
    p2 = (k - 1) * alpha + (k - 1) * (h / k) / k / (2 * bw)
    allreduce = 2 * (p1 + p2)
    c = _channels()
    gather = (g - 1) * alpha + (g - 1) * 8 * c / bw
    psum = 2 * (g - 1) * alpha + 2 * (g - 1) / g * 8 * c / bw
    bn = float(np.sum(gather + psum))
    compute = batch / chips / rate
    return compute, allreduce, bn


def test_bn_channels_are_resnet50s_53_layers():
    assert pj.resnet50_bn_channels() == _channels().astype(int).tolist()
    assert len(_channels()) == 53 and _channels().sum() == 26_560


@pytest.mark.parametrize("alpha,g", [(1e-6, 8), (5e-7, 4), (5e-6, 16)])
def test_paper_run_projection_matches_the_published_formula(alpha, g):
    inputs = pj.Inputs(alpha_s=alpha, bn_group=g)
    row = pj.project(pj.PUBLISHED["paper"]["setup"], inputs, "torus2d_bidir")
    compute, allreduce, bn = _reference_step(1024, 32768, 1952.0, alpha, 1e11, g)
    assert row["compute_s"] == pytest.approx(compute, rel=1e-12)
    assert row["allreduce_s"] == pytest.approx(allreduce, rel=1e-9)
    assert row["bn_s"] == pytest.approx(bn, rel=1e-9)
    step = compute + allreduce + bn
    assert row["step_s"] == pytest.approx(step, rel=1e-9)
    assert row["images_per_s"] == pytest.approx(32768 / step, rel=1e-9)
    assert row["minutes"] == pytest.approx(90 * 1_281_167 / (32768 / step) / 60, rel=1e-9)
    assert row["comm_fraction"] == pytest.approx((allreduce + bn) / step, rel=1e-9)
    # one BN group unit: replicas (2 a chip), 16 images each, BN batch g x 16
    assert (row["replicas"], row["per_replica"], row["bn_batch"]) == (2048, 16, 16 * g)
    assert row["bn_collectives"] == 2 * 53


def test_errors_are_against_the_published_results():
    paper, mlperf = pj.compare("paper"), pj.compare("mlperf_v06")
    compute, allreduce, bn = _reference_step(1024, 32768, 1952.0, 1e-6, 1e11, 8)
    step = compute + allreduce + bn
    assert paper["published_step_s"] == pytest.approx(32768 / 1.05e6)  # the paper's ~31 ms step
    assert mlperf["published_step_s"] == pytest.approx(32768 / 1.30e6)
    assert paper["step_error"] == pytest.approx(step / (32768 / 1.05e6) - 1, rel=1e-9)
    assert mlperf["images_per_s_error"] == pytest.approx((32768 / step) / 1.30e6 - 1, rel=1e-9)
    assert mlperf["minutes_error"] == pytest.approx(76 * 1_281_167 / (32768 / step) / 60 / 1.28 - 1, rel=1e-9)


def test_a_published_result_moves_only_the_error():
    """No fitting: changing MLPerf's published step (or the paper's minutes) leaves every projected number as
    it was, and moves only the published columns and the errors."""
    base = pj.compare("mlperf_v06")
    table = copy.deepcopy(pj.PUBLISHED)
    table["mlperf_v06"]["result"]["images_per_s"] = 0.5e6      # a 65.5 ms step instead of 25.2
    table["mlperf_v06"]["result"]["minutes"] = 9.0
    moved = pj.compare("mlperf_v06", published=table)
    projected = ("compute_s", "allreduce_s", "bn_s", "step_s", "images_per_s", "minutes", "comm_fraction")
    assert {k: moved[k] for k in projected} == {k: base[k] for k in projected}
    assert moved["published_step_s"] == pytest.approx(32768 / 0.5e6)
    assert moved["step_error"] != base["step_error"] and moved["minutes_error"] != base["minutes_error"]
    # the two runs share a setup (1024 chips, batch 32K): same projected step whatever each published
    assert pj.compare("paper")["step_s"] == base["step_s"]


def test_sensitivity_sweeps_one_input_at_a_time():
    setup = pj.PUBLISHED["paper"]["setup"]
    rows = pj.sensitivity(setup)
    assert [(r["input"], r["value"]) for r in rows] == (
        [("alpha_s", a) for a in (0.5e-6, 1e-6, 2e-6, 5e-6)] + [("bn_group", g) for g in (2, 4, 8, 16, 32)]
        + [("bn_form", f) for f in ("chan", "fast", "two_pass")])
    assert [r["bn_collectives_per_layer"] for r in rows if r["input"] == "bn_form"] == [2, 3, 5]
    for r in rows:  # every point is the formula at that input, the others at their defaults
        alpha = r["value"] if r["input"] == "alpha_s" else 1e-6
        g = r["value"] if r["input"] == "bn_group" else 8
        if r["input"] != "bn_form":
            compute, allreduce, bn = _reference_step(1024, 32768, 1952.0, alpha, 1e11, g)
            got = r["by"]["torus2d_bidir"]
            assert (got["allreduce_s"], got["bn_s"]) == pytest.approx((allreduce, bn), rel=1e-9)
    bn = {r["value"]: r["by"]["ring"]["bn_s"] for r in rows if r["input"] == "bn_group"}
    assert list(bn.values()) == sorted(bn.values())          # a bigger group: more hops per BN collective
    ar = {r["by"]["ring"]["allreduce_s"] for r in rows if r["input"] == "bn_group"}
    assert len(ar) == 1                                       # the BN group does not touch the all-reduce


def test_conclusions_say_where_a_claim_fails():
    setup = pj.PUBLISHED["paper"]["setup"]
    rows = pj.sensitivity(setup)
    out = {c["claim"]: c for c in pj.conclusions(rows, {"paper": 32768 / 1.05e6})}
    assert out["the bidirectional 2-D all-reduce is the fastest of the three"]["holds"]
    assert out["the projected step is below paper's published step"]["holds"]
    under10 = out["communication is under 10% of the step (bidirectional 2-D)"]
    expect = [f"{r['input']}={r['value']}" for r in rows if r["by"]["torus2d_bidir"]["comm_fraction"] >= 0.10]
    assert not under10["holds"] and under10["where_not"] == expect and "alpha_s=5e-06" in expect
    bn = out["the BN collectives cost at least as much as the bidirectional 2-D gradient all-reduce"]
    assert bn["where_not"] == ["bn_group=2", "bn_group=4"]  # 0.16 and 0.49 ms against 0.63 ms
    # a published step far below every projection makes the last claim fail everywhere
    low = {c["claim"]: c for c in pj.conclusions(rows, {"x": 1e-3})}
    assert len(low["the projected step is below x's published step"]["where_not"]) == len(rows)


def test_comm_fraction_against_chip_count():
    rows = pj.comm_fraction()
    assert [(r["chips"], r["algorithm"]) for r in rows] == [
        (n, a) for n in (16, 64, 256, 512, 1024) for a in ("ring", "torus2d", "torus2d_bidir")]
    pod = {r["algorithm"]: r for r in rows if r["chips"] == 1024}
    assert pod["ring"]["comm_fraction"] > pod["torus2d"]["comm_fraction"] > pod["torus2d_bidir"]["comm_fraction"]
    for r in rows:
        assert r["batch"] == 32 * r["chips"]
        assert r["comm_fraction"] == pytest.approx((r["allreduce_s"] + r["bn_s"]) / r["step_s"])
    ring = [r["allreduce_s"] for r in rows if r["algorithm"] == "ring"]
    assert ring == sorted(ring)  # the 1-D ring's 2(N-1) hops grow with the pod


def test_bad_inputs_name_the_value_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r"chips: 100 is not a modelled TPU v3 slice; allowed values: \[16,"):
        pj.project({"chips": 100, "batch": 3200, "epochs": 90})
    with pytest.raises(ValueError, match="bn_group: 3 replicas does not divide the 2048 replicas"):
        pj.project(pj.PUBLISHED["paper"]["setup"], pj.Inputs(bn_group=3))
    with pytest.raises(ValueError, match=r"run: 'v07' is unknown; allowed values: \['mlperf_v06', 'paper'\]"):
        pj.compare("v07")
    with pytest.raises(ValueError, match="algorithm: 'psum'"):
        pj.project(pj.PUBLISHED["paper"]["setup"], algorithm="psum")


def test_every_input_has_a_source():
    assert set(SOURCES := pj.SOURCES) == {f.name for f in dataclasses.fields(pj.Inputs)}
    assert all("[assumed]" in SOURCES[k] for k in ("alpha_s", "directions"))
