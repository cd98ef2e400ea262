"""labkit.collectives.costmodel: textbook step counts, latency/bandwidth limits, the fit, the pod projection."""
import math

import numpy as np
import pytest

from labkit.collectives import costmodel as cm


def _flat(shape, alpha=1e-6, bw=1e11, wrap=True):
    return cm.Network("test", shape, cm.Link(alpha, bw, wrap), cm.Link(alpha, bw, wrap))


@pytest.mark.parametrize("shape", [(32, 32), (2, 4), (4, 2), (1, 8), (16, 32)], ids=str)
def test_step_counts_match_the_textbook(shape):
    x, y = shape
    net = _flat(shape)
    assert cm.predict(net, "ring", 1e6).steps == 2 * (x * y - 1)
    assert cm.predict(net, "torus2d", 1e6).steps == 2 * (x - 1) + 2 * (y - 1)
    assert cm.predict(net, "hierarchical", 1e6).steps == 2 * (x - 1) + 2 * (y - 1)
    # the halves run concurrently: each phase waits for the longer dimension
    assert cm.predict(net, "torus2d_bidir", 1e6).steps == 4 * max(x - 1, y - 1)


def test_pod_numbers_from_the_paper():
    pod = cm.network("tpu-v3-pod")
    assert pod.shape == (32, 32) and pod.size == 1024
    assert cm.predict(pod, "torus2d", 1).steps == 124 and cm.predict(pod, "ring", 1).steps == 2046


def test_small_messages_are_latency_bound_and_large_ones_bandwidth_bound():
    net = _flat((32, 32))
    tiny, huge = 1024, 1e12
    for alg in ("ring", "torus2d", "torus2d_bidir"):
        small, big = cm.predict(net, alg, tiny), cm.predict(net, alg, huge)
        assert small.latency_s > 100 * small.bandwidth_s
        assert big.bandwidth_s > 100 * big.latency_s
    # latency limit: steps * alpha
    assert cm.predict(net, "ring", tiny).time_s == pytest.approx(2046e-6, rel=1e-3)
    # bandwidth limit of a ring all-reduce: 2 (N-1)/N * S / B (the nccl-tests busbw factor)
    assert cm.predict(net, "ring", huge).time_s == pytest.approx(2 * 1023 / 1024 * huge / 1e11, rel=1e-3)


def test_bidir_halves_the_bandwidth_time_of_torus2d_on_a_square_torus():
    net = _flat((32, 32))
    s = 4 * cm.RESNET50_PARAMS
    t2, bi = cm.predict(net, "torus2d", s), cm.predict(net, "torus2d_bidir", s)
    assert bi.bandwidth_s == pytest.approx(t2.bandwidth_s / 2, rel=1e-9)
    assert bi.latency_s == pytest.approx(t2.latency_s)
    # torus2d moves the same bytes per link as the ring; it wins on latency (124 vs 2046 steps)
    ring = cm.predict(net, "ring", s)
    assert t2.bandwidth_s == pytest.approx(ring.bandwidth_s, rel=1e-9) and t2.time_s < ring.time_s


def test_two_directions_help_only_with_wraparound_and_more_than_two_members():
    s = 1e9
    wrap, mesh = _flat((8, 8), wrap=True), _flat((8, 8), wrap=False)
    assert cm.predict(wrap, "torus2d", s, directions=2).bandwidth_s == pytest.approx(
        cm.predict(wrap, "torus2d", s).bandwidth_s / 2)
    assert cm.predict(mesh, "torus2d", s, directions=2).bandwidth_s == pytest.approx(
        cm.predict(mesh, "torus2d", s).bandwidth_s)
    two = _flat((2, 2))
    assert cm.predict(two, "torus2d", s, directions=2).time_s == pytest.approx(cm.predict(two, "torus2d", s).time_s)


def test_gpu_cluster_ring_is_paced_by_the_network_link():
    net = cm.network("16x8-gpu")
    assert net.shape == (16, 8) and net.y.bandwidth > net.x.bandwidth
    s = 1e9
    ring = cm.predict(net, "ring", s)
    assert ring.bandwidth_s == pytest.approx(2 * 127 / 128 * s / net.x.bandwidth, rel=1e-9)
    # reduce-scatter inside the host first: only 1/8 of the bytes cross the slow network
    assert cm.predict(net, "hierarchical", s).time_s < cm.predict(net, "torus2d", s).time_s < ring.time_s


def test_unknown_names_list_allowed_values():
    with pytest.raises(ValueError, match="allowed values"):
        cm.network("tpu-v9-8")
    with pytest.raises(ValueError, match="allowed values"):
        cm.predict(_flat((2, 2)), "butterfly", 1.0)


def test_fit_recovers_alpha_and_beta_from_synthetic_measurements():
    alpha, bw = 40e-6, 3e9
    sizes = np.array([1e3, 1e4, 1e5, 1e6, 1e7, 1e8])
    truth = [cm.predict(_flat((2, 4), alpha, bw), "torus2d", s).time_s for s in sizes]
    f = cm.fit((2, 4), "torus2d", sizes, truth)
    assert f["alpha_s"] == pytest.approx(alpha, rel=1e-6) and f["bandwidth"] == pytest.approx(bw, rel=1e-6)
    assert f["steps"] == 8 and max(abs(e) for e in f["rel_error"]) < 1e-9
    flat = cm.fit((2, 4), "ring", sizes[:3], [1e-3, 1e-3, 1e-3])  # constant time: latency only
    assert flat["alpha_s"] == pytest.approx(1e-3 / 14) and flat["beta_s_per_byte"] * 1e5 < 1e-12
    falling = cm.fit((2, 4), "ring", sizes[:3], [3e-3, 2e-3, 1e-3])  # falling with size: beta clipped to 0
    assert falling["beta_s_per_byte"] == 0.0 and math.isinf(falling["bandwidth"])


def test_resnet50_projection_on_the_pod():
    rows = {r["algorithm"]: r for r in cm.project_resnet50("tpu-v3-pod")}
    assert rows["ring"]["bytes"] == 4 * 25_557_032
    assert rows["torus2d_bidir"]["allreduce_s"] < rows["torus2d"]["allreduce_s"] < rows["ring"]["allreduce_s"]
    # bandwidth-only bound of ~1 ms for 102 MB at 1e11 B/s (paper-facts: ~0.5 ms for the bf16 51 MB)
    bf16 = {r["algorithm"]: r for r in cm.project_resnet50("tpu-v3-pod", bytes_per_param=2, directions=2)}
    assert 0.2e-3 < bf16["torus2d"]["bandwidth_s"] < 1e-3
    r = rows["torus2d"]
    assert r["compute_s"] == pytest.approx(32 / 1952)
    assert r["minutes_to_train"] == pytest.approx(90 * 1_281_167 / r["images_per_s"] / 60)
    # an optimistic model (no input/BN/eval time) must not be slower than the paper's measured run
    assert r["minutes_to_train"] < cm.PAPER["minutes"]


def test_link_level_forms_are_modelled_like_their_xla_composed_twins():
    net = cm.network("tpu-v3-pod")
    assert cm.predict(net, "torus2d_links", 1e8).time_s == cm.predict(net, "torus2d", 1e8).time_s
    bidir_links = cm.predict(net, "torus2d_bidir_links", 1e8)  # always both link directions
    assert bidir_links.algorithm == "torus2d_bidir_links"
    assert bidir_links.time_s == cm.predict(net, "torus2d_bidir", 1e8, directions=2).time_s
    assert bidir_links.time_s < cm.predict(net, "torus2d_bidir", 1e8, directions=1).time_s


def test_bn_collectives_per_resnet50_step():
    """The issue's count: 5 a layer two-pass (265 for ResNet-50's 53 BN layers), one each way with chan (106)."""
    assert cm.bn_collectives_per_step("two_pass") == {"forward": 106, "backward": 159, "total": 265}
    assert cm.bn_collectives_per_step("chan") == {"forward": 53, "backward": 53, "total": 106}
    assert cm.bn_collectives_per_step("fast", layers=10)["total"] == 30
    with pytest.raises(ValueError, match=r"unknown 'exact'; allowed values: \['chan', 'two_pass', 'fast'\]"):
        cm.bn_collectives_per_step("exact")


def test_single_collectives_are_textbook_ring_phases():
    """On a ring of g chips (alpha per step, B bytes/s): psum of n bytes = 2(g-1) steps, 2(g-1)/g n/B; all_gather
    of n bytes from each = (g-1) steps, (g-1) n/B; psum_scatter of n bytes = (g-1) steps, (g-1)/g n/B."""
    g, n, alpha, bw = 8, 4096.0, 1e-6, 1e11
    line = cm.Link(alpha, bw, wraparound=True)
    net = cm.Network("group", (1, g), line, line)
    psum, gather, scatter = (cm.predict_collective(net, p, n) for p in ("psum", "all_gather", "psum_scatter"))
    assert (psum.steps, gather.steps, scatter.steps) == (2 * (g - 1), g - 1, g - 1)
    assert psum.latency_s == pytest.approx(2 * (g - 1) * alpha) and gather.latency_s == pytest.approx((g - 1) * alpha)
    assert psum.bandwidth_s == pytest.approx(2 * (g - 1) / g * n / bw)
    assert gather.bandwidth_s == pytest.approx((g - 1) * n / bw)
    assert scatter.bandwidth_s == pytest.approx((g - 1) / g * n / bw)
    with pytest.raises(ValueError, match="unknown primitive 'ppermute'"):
        cm.predict_collective(net, "ppermute", n)


def test_chan_bn_costs_less_than_two_pass_on_a_pod_bn_group():
    """BN collectives are small and latency-bound on a pod: 2 collectives a layer (one all-gather of (g x 2
    values a channel), one psum of 2) beat 5 psums of 1 value, for ResNet-50-like channel counts."""
    pod = cm.network("tpu-v3-pod")
    line = cm.Link(pod.y.alpha_s, pod.y.bandwidth, wraparound=False)
    group = cm.Network("bn-group", (1, 8), line, line)
    channels = [64] * 10 + [256] * 20 + [1024] * 20 + [2048] * 3
    chan, two = cm.predict_bn(group, channels, "chan"), cm.predict_bn(group, channels, "two_pass")
    assert chan.steps == 53 * (7 + 14) and two.steps == 53 * 5 * 14
    assert chan.latency_s < two.latency_s / 3 and chan.time_s < two.time_s
    # bytes each chip puts in: chan 2 + 2 values a channel, two_pass 5 x 1
    assert chan.nbytes == pytest.approx(4 * 4 * sum(channels)) and two.nbytes == pytest.approx(4 * 5 * sum(channels))
