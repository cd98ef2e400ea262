"""collectives.costmodel: an alpha-beta cost model of the all-reduce algorithms, its fit, and a pod projection.

Owns: named networks (TPU v3 pod 32x32 and slices, TPU v2-8 / v3-8, "N hosts x 8 GPUs"), the predicted time of
``ring``, ``torus2d``, ``torus2d_bidir``, ``hierarchical`` and the link-level forms on them, a fit of
(alpha, beta) to measured times, the ResNet-50 projection (all-reduce time, step time, time to train), and the
BN collectives of a step (``BN_FORMS``: which collectives one BN layer does, forward and backward, by
``labkit.bn.DistributedBatchNorm.variance``; ``bn_collectives_per_step``; ``predict_collective``, ``predict_bn``).
Pure Python + numpy. The whole ResNet-50 step on a pod (BN collectives included, in replicas), set beside the
published runs without fitting to them, is ``labkit.collectives.project``'s.
Must not: run JAX collectives, time anything, or emit telemetry (``labkit.bench.collectives`` does).

Model: a ring phase over k members moving a payload of P bytes takes (k-1) steps of
``alpha + (P/k) / (bandwidth * directions)``: alpha = per-hop latency, bandwidth = one link, one direction.
All-reduce = reduce-scatter + all-gather (2(k-1) steps). ``torus2d_bidir`` runs its two halves on the X and Y
links at the same time, so each of its phases costs the slower of the two. ``torus2d_links`` has torus2d's
phases; ``torus2d_bidir_links`` has torus2d_bidir's, always on both link directions. ``steps`` = the longest
chain of ``ppermute`` hops in labkit's link-level code (tested against the traced programs).
Assumptions are stated where used.
"""
from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

__all__ = ["MODELLED", "RESNET50_PARAMS", "RESNET50_BN_LAYERS", "BN_FORMS", "Link", "Network", "Estimate", "network",
           "predict", "predict_collective", "predict_bn", "bn_collectives_per_step", "fit", "gpu_cluster",
           "project_resnet50", "PAPER", "MLPERF_V06_1024"]

MODELLED = ("xla", "ring", "torus2d", "torus2d_bidir", "hierarchical", "torus2d_links", "torus2d_bidir_links")
RESNET50_PARAMS = 25_557_032          # paper-facts section 3: ~102 MB fp32 / ~51 MB bf16
RESNET50_BN_LAYERS = 53               # labkit's ResNet-50: stem + 16 blocks x 3 + 4 projections (tested)

# The collectives ONE BN layer does per step, by ``DistributedBatchNorm.variance``: (primitive, float32 values per
# channel that each replica puts in), forward and backward (the gradient with respect to the layer's input; the
# scale/bias gradients travel in the gradient all-reduce). Read from the traced programs (tests/test_bn.py).
BN_FORMS: dict[str, dict[str, tuple[tuple[str, int], ...]]] = {
    "chan": {"forward": (("all_gather", 2),), "backward": (("psum", 2),)},      # (mean, M2) gathered; 2 cotangents
    "two_pass": {"forward": (("psum", 1), ("psum", 1)), "backward": (("psum", 1),) * 3},
    "fast": {"forward": (("psum", 2),), "backward": (("psum", 1),) * 2},
}
IMAGENET_TRAIN = 1_281_167
PAPER = {"minutes": 2.2, "images_per_s": 1.05e6, "chips": 1024, "batch": 32768}            # [paper]
MLPERF_V06_1024 = {"minutes": 1.28, "images_per_s": 1.30e6, "chips": 1024, "batch": 32768}  # MLPerf v0.6

TPU_LINK_BW = 1e11       # ICI, bytes/s per link per direction (paper-facts section 3)
TPU_HOP_ALPHA = 1e-6     # [assumed] ~1 us per hop: makes ring steps latency-bound below ~alpha*bw = 100 kB/chunk
MLPERF_16CHIP_IMG_PER_S = 1952  # MLPerf v0.6, 16 chips: per-chip rate where communication is small


@dataclasses.dataclass(frozen=True)
class Link:
    """The links along one torus dimension: per-hop latency, bytes/s per link per direction, wrap-around."""
    alpha_s: float
    bandwidth: float
    wraparound: bool = True


@dataclasses.dataclass(frozen=True)
class Network:
    """An (X, Y) torus or mesh of chips with one ``Link`` kind per dimension, and where its numbers come from."""
    name: str
    shape: tuple[int, int]
    x: Link
    y: Link
    source: str = ""

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclasses.dataclass(frozen=True)
class Estimate:
    """One prediction: sequential ring steps, latency and bandwidth parts, and their sum."""
    algorithm: str
    nbytes: float
    steps: int
    latency_s: float
    bandwidth_s: float

    @property
    def time_s(self) -> float:
        return self.latency_s + self.bandwidth_s


def _tpu(name: str, shape: tuple[int, int], bw: float = TPU_LINK_BW, note: str = "") -> Network:
    # [assumed] only a full 32-chip dimension has wrap-around links; smaller v3 slices are meshes.
    links = [Link(TPU_HOP_ALPHA, bw, wraparound=(s == 32)) for s in shape]
    return Network(name, shape, links[0], links[1],
                   f"ICI {bw:.0e} B/s per link per direction [paper-facts]; hop latency {TPU_HOP_ALPHA:.0e} s "
                   f"[assumed]; wrap-around only on 32-chip dimensions [assumed]{note}")


def gpu_cluster(hosts: int, gpus_per_host: int = 8, *, nvlink_bw: float = 1.2e11, net_bw: float = 1.25e10,
                nvlink_alpha: float = 2e-6, net_alpha: float = 5e-6) -> Network:
    """``hosts`` x ``gpus_per_host`` GPUs: X across hosts (network), Y inside a host (NVLink).

    [assumed] defaults: NVLink ring ~1.2e11 B/s per direction (V100/A100 class), 100 Gb/s (1.25e10 B/s) of
    network per GPU, 2 us / 5 us per step. Pass your own numbers for a specific cluster.
    """
    return Network(f"{hosts} hosts x {gpus_per_host} GPUs", (hosts, gpus_per_host),
                   Link(net_alpha, net_bw, True), Link(nvlink_alpha, nvlink_bw, True),
                   f"[assumed] NVLink {nvlink_bw:.1e} B/s, network {net_bw:.2e} B/s per GPU, "
                   f"alpha {nvlink_alpha:.0e}/{net_alpha:.0e} s")


_NAMED = {
    "tpu-v2-8": lambda: _tpu("TPU v2-8 (2x2 chips)", (2, 2), note="; v2 link bandwidth assumed equal to v3's"),
    "tpu-v3-8": lambda: _tpu("TPU v3-8 (2x2 chips)", (2, 2)),
    "tpu-v3-32": lambda: _tpu("TPU v3-32 (4x4 chips)", (4, 4)),
    "tpu-v3-128": lambda: _tpu("TPU v3-128 (8x8 chips)", (8, 8)),
    "tpu-v3-512": lambda: _tpu("TPU v3-512 (16x16 chips)", (16, 16)),
    "tpu-v3-1024": lambda: _tpu("TPU v3-1024 (16x32 chips)", (16, 32)),
    "tpu-v3-pod": lambda: _tpu("TPU v3 pod (32x32 chips)", (32, 32)),
}


def network(name: str) -> Network:
    """A named network: ``tpu-v3-pod`` (= ``tpu-v3-2048``), ``tpu-v3-{8,32,128,512,1024}``, ``tpu-v2-8``,
    or ``"<N>x8-gpu"`` (N hosts x 8 GPUs)."""
    key = "tpu-v3-pod" if name == "tpu-v3-2048" else name
    if key in _NAMED:
        return _NAMED[key]()
    m = re.fullmatch(r"(\d+)x(\d+)-gpu", name)
    if m and int(m.group(1)) >= 1 and int(m.group(2)) >= 1:
        return gpu_cluster(int(m.group(1)), int(m.group(2)))
    raise ValueError(f"network: unknown name {name!r}; allowed values: {sorted(_NAMED) + ['tpu-v3-2048']} "
                     "or '<hosts>x<gpus>-gpu' such as '16x8-gpu'")


def _phase(k: int, payload: float, link: Link, directions: int) -> tuple[int, float, float]:
    """One reduce-scatter or all-gather ring over ``k`` members: (steps, latency_s, bandwidth_s)."""
    if k <= 1:
        return 0, 0.0, 0.0
    # Two counter-rotating rings need both directions of every hop: a ring of 2, or a line without wrap-around,
    # already uses both directions for one ring.
    dirs = directions if (link.wraparound and k > 2) else 1
    return k - 1, (k - 1) * link.alpha_s, (k - 1) * payload / k / (link.bandwidth * dirs)


def _chain(*phases) -> tuple[int, float, float]:
    return tuple(sum(p[i] for p in phases) for i in range(3))  # type: ignore[return-value]


def _concurrent(a, b) -> tuple[int, float, float]:
    """Two phases on disjoint links at the same time: the slower one decides (per part)."""
    return max(a[0], b[0]), max(a[1], b[1]), max(a[2], b[2])


def predict(net: Network, algorithm: str, nbytes: float, *, directions: int = 1) -> Estimate:
    """Predicted all-reduce of ``nbytes`` per chip on ``net``. ``directions=2``: every ring is split into two
    counter-rotating rings (what TPU/NCCL runtimes do); labkit's ``ring`` and ``torus2d_links`` use one.

    ``xla`` is modelled as the 1-D ring (nccl-tests' busbw convention); it stands for whatever XLA picks.
    ``torus2d_links`` is ``torus2d``; ``torus2d_bidir_links`` is ``torus2d_bidir`` with ``directions=2``
    whatever is passed (its code splits every phase over both directions of its links).
    """
    if algorithm not in MODELLED:
        raise ValueError(f"predict: unknown algorithm {algorithm!r}; allowed values: {list(MODELLED)}")
    if directions not in (1, 2):
        raise ValueError(f"directions: must be 1 or 2, got {directions}")
    name = algorithm
    (nx, ny), s = net.shape, float(nbytes)
    if algorithm == "torus2d_bidir_links":
        algorithm, directions = "torus2d_bidir", 2
    algorithm = {"torus2d_links": "torus2d"}.get(algorithm, algorithm)
    if algorithm in ("ring", "xla"):
        # The snake ring uses X and Y hops: the slowest link kind sets the pace of every step.
        used = [lk for lk, k in ((net.x, nx), (net.y, ny)) if k > 1] or [net.x]
        slow = Link(max(lk.alpha_s for lk in used), min(lk.bandwidth for lk in used),
                    all(lk.wraparound for lk in used) or (nx > 1 and ny > 1))
        rs = _phase(net.size, s, slow, directions)
        parts = _chain(rs, rs)
    elif algorithm == "torus2d":
        parts = _chain(_phase(nx, s, net.x, directions), _phase(ny, s / nx, net.y, directions),
                       _phase(ny, s / nx, net.y, directions), _phase(nx, s, net.x, directions))
    elif algorithm == "hierarchical":
        parts = _chain(_phase(ny, s, net.y, directions), _phase(nx, s / ny, net.x, directions),
                       _phase(nx, s / ny, net.x, directions), _phase(ny, s, net.y, directions))
    else:  # torus2d_bidir: half A Y-then-X, half B X-then-Y, at the same time
        h = s / 2
        p1 = _concurrent(_phase(ny, h, net.y, directions), _phase(nx, h, net.x, directions))
        p2 = _concurrent(_phase(nx, h / ny, net.x, directions), _phase(ny, h / nx, net.y, directions))
        parts = _chain(p1, p2, p2, p1)
    steps, lat, bw = parts
    return Estimate(name, s, int(steps), lat, bw)


def predict_collective(net: Network, primitive: str, nbytes: float, *, directions: int = 1) -> Estimate:
    """One XLA collective over every chip of ``net`` (a ring through them), ``nbytes`` = what each chip puts in.

    ``psum``: an all-reduce (``predict``'s ``ring``: reduce-scatter + all-gather). ``all_gather``: the all-gather
    phase alone, of a payload of ``net.size`` x ``nbytes`` (every member's block reaches every member).
    ``psum_scatter``: the reduce-scatter phase alone, of ``nbytes``.
    """
    if primitive == "psum":
        return dataclasses.replace(predict(net, "ring", nbytes, directions=directions), algorithm="psum")
    if primitive not in ("all_gather", "psum_scatter"):
        raise ValueError(f"predict_collective: unknown primitive {primitive!r}; allowed values: "
                         "['psum', 'all_gather', 'psum_scatter']")
    payload = float(nbytes) * (net.size if primitive == "all_gather" else 1)
    both = predict(net, "ring", payload, directions=directions)  # one phase = half of the ring all-reduce
    return Estimate(primitive, float(nbytes), both.steps // 2, both.latency_s / 2, both.bandwidth_s / 2)


def bn_collectives_per_step(form: str = "chan", layers: int = RESNET50_BN_LAYERS) -> dict:
    """How many BN collectives a training step does: ``{"forward", "backward", "total"}`` for ``layers`` BN layers
    (default: ResNet-50's 53) normalizing with ``form``. Two-pass: 5 a layer (265); chan: 2 (106)."""
    if form not in BN_FORMS:
        raise ValueError(f"bn form: unknown {form!r}; allowed values: {list(BN_FORMS)}")
    fwd, bwd = len(BN_FORMS[form]["forward"]) * layers, len(BN_FORMS[form]["backward"]) * layers
    return {"forward": fwd, "backward": bwd, "total": fwd + bwd}


def predict_bn(net: Network, channels, form: str = "chan", *, directions: int = 1) -> Estimate:
    """All BN collectives of one step: every layer (``channels``: its channel count, one entry a layer) does
    ``BN_FORMS[form]``, each collective over ``net`` (the BN group's chips), float32. ``steps`` = ring steps in
    all; the time is their sum (a layer's collectives wait for its compute, so they do not overlap each other)."""
    bn_collectives_per_step(form, 1)  # validates the form
    parts = [predict_collective(net, prim, 4.0 * floats * c, directions=directions)
             for c in channels for prim, floats in BN_FORMS[form]["forward"] + BN_FORMS[form]["backward"]]
    return Estimate(f"bn:{form}", sum(p.nbytes for p in parts), sum(p.steps for p in parts),
                    sum(p.latency_s for p in parts), sum(p.bandwidth_s for p in parts))


def fit(shape: tuple[int, int], algorithm: str, nbytes, times_s) -> dict:
    """Fit per-step alpha and per-link beta (s/byte) to measured times on an (X, Y) torus.

    Features come from ``predict`` on a unit network (alpha=1 -> step count; bandwidth=1 -> bytes per link);
    least squares on *relative* error so 1 KB and 128 MB points count alike; both parameters kept >= 0.
    Returns ``alpha_s``, ``beta_s_per_byte``, ``bandwidth`` (1/beta), ``predicted_s`` and ``rel_error``.
    """
    nbytes, t = np.asarray(nbytes, float), np.asarray(times_s, float)
    if nbytes.shape != t.shape or t.size < 2 or (t <= 0).any():
        raise ValueError(f"fit: need >= 2 positive times matching the sizes, got {t.size} times for "
                         f"{nbytes.size} sizes")
    lat_net = Network("unit-alpha", shape, Link(1.0, math.inf), Link(1.0, math.inf))
    bw_net = Network("unit-beta", shape, Link(0.0, 1.0), Link(0.0, 1.0))
    steps = np.array([predict(lat_net, algorithm, b).time_s for b in nbytes])
    wire = np.array([predict(bw_net, algorithm, b).time_s for b in nbytes])
    a = np.stack([steps, wire], 1) / t[:, None]
    coef = _nonneg_lstsq(a, np.ones_like(t))
    pred = a @ coef * t
    alpha, beta = float(coef[0]), float(coef[1])
    return {"algorithm": algorithm, "alpha_s": alpha, "beta_s_per_byte": beta,
            "bandwidth": (1.0 / beta) if beta > 0 else math.inf, "steps": int(steps[0]),
            "predicted_s": pred.tolist(), "rel_error": ((pred - t) / t).tolist()}


def _nonneg_lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two-parameter least squares with both coefficients >= 0 (try full, then each one alone)."""
    best, best_err = np.zeros(a.shape[1]), np.inf
    for cols in ([0, 1], [0], [1]):
        if np.allclose(a[:, cols], 0):
            continue
        c = np.zeros(a.shape[1])
        c[cols] = np.linalg.lstsq(a[:, cols], b, rcond=None)[0]
        if (c < 0).any():
            continue
        err = float(np.sum((a @ c - b) ** 2))
        if err < best_err:
            best, best_err = c, err
    return best


def project_resnet50(net: Network | str = "tpu-v3-pod", algorithms=("ring", "torus2d", "torus2d_bidir"), *,
                     bytes_per_param: int = 4, directions: int = 1,
                     chip_images_per_s: float = MLPERF_16CHIP_IMG_PER_S, global_batch: int = 32768,
                     epochs: float = 90, overlap: float = 0.0) -> list[dict]:
    """The ResNet-50 gradient all-reduce on ``net`` and what it does to step time and time to train.

    Stated inputs: ``chip_images_per_s`` = compute-only throughput per chip (default: MLPerf v0.6's 1,952 img/s
    per chip at 16 chips, where communication is negligible); step = compute (global_batch / chips / rate) +
    (1 - ``overlap``) x all-reduce; ``epochs`` x 1,281,167 images; no input, BN-collective, eval or startup time.
    """
    net = network(net) if isinstance(net, str) else net
    grad_bytes = RESNET50_PARAMS * bytes_per_param
    compute_s = global_batch / net.size / chip_images_per_s
    rows = []
    for alg in algorithms:
        est = predict(net, alg, grad_bytes, directions=directions)
        step_s = compute_s + (1.0 - overlap) * est.time_s
        ips = global_batch / step_s
        rows.append({"network": net.name, "chips": net.size, "algorithm": alg, "bytes": grad_bytes,
                     "directions": directions, "steps": est.steps, "allreduce_s": est.time_s,
                     "latency_s": est.latency_s, "bandwidth_s": est.bandwidth_s, "compute_s": compute_s,
                     "step_s": step_s, "images_per_s": ips,
                     "minutes_to_train": epochs * IMAGENET_TRAIN / ips / 60.0, "epochs": epochs})
    return rows
