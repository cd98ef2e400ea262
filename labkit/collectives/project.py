"""collectives.project: the ResNet-50 training step on a TPU v3 pod, projected from stated inputs and set beside
the published runs it should explain.

Owns: the published runs (``PUBLISHED``: the paper's 2.2-minute run and MLPerf v0.6's 1.28-minute run, each
split into its *setup* (chips, batch, epochs) and its *result* (minutes, images/s), with sources), the stated
inputs of a projection (``Inputs``, with ``SOURCES``), ``project`` (one setup's step from the inputs),
``compare`` (the projection beside a published result, errors in %), ``sensitivity`` (one input swept at a
time), ``conclusions`` (which statements hold across a sweep) and ``comm_fraction`` (against chip count).
Must not: let a published *result* reach ``project`` (nothing is solved so that a projection lands on a
measurement), run JAX, time anything, or carry a share measured on simulated CPU devices to the pod.

Units: a BN group is counted in **replicas** (one replica per TPU v3 core, 2 cores a chip: paper-facts.md,
headline). A BN collective is a ring over the group's g replicas, neighbours in a row of the torus; every ring
step costs one hop (``alpha_s``) and moves its chunk at ``bandwidth``: a hop between the two cores of one chip is
[assumed] as costly as one between chips (an upper bound). Step = compute + gradient all-reduce + BN collectives;
no overlap, no input wait, no evaluation or start-up (stated, so a projection should come out *below* a
published step).
"""
from __future__ import annotations

import dataclasses

from labkit.collectives import costmodel as cm

__all__ = ["PUBLISHED", "Inputs", "SOURCES", "ALGORITHMS", "resnet50_bn_channels", "project", "compare",
           "sensitivity", "conclusions", "comm_fraction"]

ALGORITHMS = ("ring", "torus2d", "torus2d_bidir")
_REF = "../shared/reference/paper-facts.md"
PUBLISHED = {
    "paper": {"label": "paper (Ying et al. 2018)",
              "setup": {"chips": 1024, "batch": 32768, "epochs": 90},
              "result": {"minutes": 2.2, "images_per_s": 1.05e6},
              "source": f"the paper's abstract (1024 chips, 2.2 min, over 1.05 M img/s); batch 32,768: {_REF} "
                        "'Scale arithmetic' [derived]; ~90 epochs: §4 [code]"},
    "mlperf_v06": {"label": "MLPerf v0.6 (same team)",
                   "setup": {"chips": 1024, "batch": 32768, "epochs": 76},
                   "result": {"minutes": 1.28, "images_per_s": 1.30e6},
                   "source": f"mlcommons/training_results_v0.6 Google/results/tpu-v3-2048/resnet/ ({_REF} §5 "
                             "table, §7); 76 epochs: the top of §4's 72-76"},
}

SOURCES = {
    "chip_images_per_s": f"MLPerf v0.6 on 16 chips, 1,952 img/s per chip end to end ({_REF} §5): an upper bound "
                         "for compute alone at 32 images a chip (it ran 256 a chip); §6's 890-976 img/s per core "
                         "gives 1,780-1,952 a chip",
    "alpha_s": "[assumed] 1 us per hop: no source gives the ICI hop latency",
    "bandwidth": f"ICI ~1e11 B/s per link per direction ({_REF} §3)",
    "bytes_per_param": f"fp32 gradients of 25,557,032 parameters ({_REF} §3, §4: fp32 weights)",
    "directions": "[assumed] every ring runs as two counter-rotating rings on a wrap-around dimension",
    "bn_group": f"8 replicas: MLPerf v0.6's model_bn_span 128 at 16 images a replica ({_REF} §1, §7)",
    "bn_form": "labkit's DistributedBatchNorm default: 1 all_gather forward, 1 psum backward a layer",
    "cores_per_chip": f"TPU v3: 2 cores a chip, one replica a core (1024 chips = 2048 cores: {_REF}, headline)",
}


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The stated inputs of a projection (``SOURCES`` says where each comes from)."""
    chip_images_per_s: float = 1952.0
    alpha_s: float = 1e-6
    bandwidth: float = 1e11
    bytes_per_param: int = 4
    directions: int = 2
    bn_group: int = 8          # replicas
    bn_form: str = "chan"
    cores_per_chip: int = 2    # replicas per chip on TPU v3


def resnet50_bn_channels() -> list[int]:
    """The channel count of each of ResNet-50's 53 BN layers, from the architecture: stem 64; per bottleneck
    block (planes, planes, 4 x planes); one projection (4 x planes) per stage; stages (64, 3), (128, 4),
    (256, 6), (512, 3). Checked against labkit's model (``lab.resnet50_bn_layers``) by notebook 05's cell,
    which tests/test_notebooks.py re-runs (one ResNet-50 shape trace for the suite, not two)."""
    out = [64]
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        out += [planes, planes, 4 * planes] * blocks + [4 * planes]
    return out


_SLICES = {16: "tpu-v3-32", 64: "tpu-v3-128", 256: "tpu-v3-512", 512: "tpu-v3-1024", 1024: "tpu-v3-pod"}


def _net(chips: int, inputs: Inputs) -> cm.Network:
    if chips not in _SLICES:
        raise ValueError(f"chips: {chips} is not a modelled TPU v3 slice; allowed values: {sorted(_SLICES)}")
    base = cm.network(_SLICES[chips])
    return dataclasses.replace(base, x=cm.Link(inputs.alpha_s, inputs.bandwidth, base.x.wraparound),
                               y=cm.Link(inputs.alpha_s, inputs.bandwidth, base.y.wraparound))


def _bn_s(inputs: Inputs, replicas: int, channels) -> float:
    g = inputs.bn_group
    if g < 1 or replicas % g:
        raise ValueError(f"bn_group: {g} replicas does not divide the {replicas} replicas; allowed values: "
                         f"divisors of {replicas} such as 1, 2, 4, 8")
    line = cm.Link(inputs.alpha_s, inputs.bandwidth, wraparound=False)  # g neighbours of a row: a line
    group = cm.Network(f"BN group ({g} replicas)", (1, g), line, line)
    return cm.predict_bn(group, channels, inputs.bn_form, directions=inputs.directions).time_s


def project(setup: dict, inputs: Inputs = Inputs(), algorithm: str = "torus2d_bidir", *,
            bn_channels=None) -> dict:
    """One ResNet-50 step for ``setup`` (``{"chips", "batch", "epochs"}``) from ``inputs``, with ``algorithm``
    for the gradient all-reduce. Only the setup and the inputs enter: no published result."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: {algorithm!r}; allowed values: {list(ALGORITHMS)}")
    chips, batch = int(setup["chips"]), int(setup["batch"])
    net = _net(chips, inputs)
    replicas = chips * inputs.cores_per_chip
    channels = resnet50_bn_channels() if bn_channels is None else list(bn_channels)
    compute_s = batch / chips / inputs.chip_images_per_s
    allreduce_s = cm.predict(net, algorithm, cm.RESNET50_PARAMS * inputs.bytes_per_param,
                             directions=inputs.directions).time_s
    bn_s = _bn_s(inputs, replicas, channels)
    step_s = compute_s + allreduce_s + bn_s
    ips = batch / step_s
    return {"chips": chips, "replicas": replicas, "batch": batch, "per_replica": batch / replicas,
            "bn_batch": batch / replicas * inputs.bn_group, "algorithm": algorithm,
            "compute_s": compute_s, "allreduce_s": allreduce_s, "bn_s": bn_s, "step_s": step_s,
            "images_per_s": ips, "minutes": setup["epochs"] * cm.IMAGENET_TRAIN / ips / 60.0,
            "comm_fraction": (allreduce_s + bn_s) / step_s,
            "bn_collectives": cm.bn_collectives_per_step(inputs.bn_form, len(channels))["total"],
            "inputs": dataclasses.asdict(inputs)}


def compare(run: str, inputs: Inputs = Inputs(), algorithm: str = "torus2d_bidir", *, published=None) -> dict:
    """``project`` of ``PUBLISHED[run]``'s setup beside its result: ``published_step_s`` (batch / images/s),
    ``published_minutes`` and the errors (projected - published) / published of step, images/s and minutes.
    ``published``: another table shaped like ``PUBLISHED`` (the tests change a result to show it moves only
    the error)."""
    table = PUBLISHED if published is None else published
    if run not in table:
        raise ValueError(f"run: {run!r} is unknown; allowed values: {sorted(table)}")
    entry = table[run]
    row = project(dict(entry["setup"]), inputs, algorithm)
    res = entry["result"]
    row.update(run=run, label=entry["label"], source=entry["source"],
               published_step_s=row["batch"] / res["images_per_s"],
               published_images_per_s=res["images_per_s"], published_minutes=res["minutes"])
    row["step_error"] = row["step_s"] / row["published_step_s"] - 1
    row["images_per_s_error"] = row["images_per_s"] / res["images_per_s"] - 1
    row["minutes_error"] = row["minutes"] / res["minutes"] - 1
    return row


def sensitivity(setup: dict, inputs: Inputs = Inputs(), *, alphas=(0.5e-6, 1e-6, 2e-6, 5e-6),
                groups=(2, 4, 8, 16, 32), forms=("chan", "fast", "two_pass")) -> list[dict]:
    """One input swept at a time, the others at ``inputs``: per-hop latency (``alpha_s``), BN group (replicas)
    and BN form (collectives a layer: chan 2, fast 3, two_pass 5). One row per (input, value): ``by`` maps
    each algorithm to its ``project`` row."""
    rows = []
    for field, values in (("alpha_s", alphas), ("bn_group", groups), ("bn_form", forms)):
        for v in values:
            point = dataclasses.replace(inputs, **{field: v})
            by = {alg: project(setup, point, alg) for alg in ALGORITHMS}
            per_layer = len(cm.BN_FORMS[point.bn_form]["forward"]) + len(cm.BN_FORMS[point.bn_form]["backward"])
            rows.append({"input": field, "value": v, "bn_collectives_per_layer": per_layer, "by": by})
    return rows


def conclusions(rows: list[dict], published_steps_s: dict) -> list[dict]:
    """Which statements hold at every point of a ``sensitivity`` sweep. ``published_steps_s``: ``{label: s}``
    (only compared against, never fed back). Each: ``claim``, ``holds`` (at every point), ``where_not``."""
    checks = {
        "the bidirectional 2-D all-reduce is the fastest of the three":
            lambda b: b["torus2d_bidir"]["allreduce_s"] <= min(b["torus2d"]["allreduce_s"], b["ring"]["allreduce_s"]),
        "the 1-D ring's gradient all-reduce takes 3x or more the bidirectional 2-D's":
            lambda b: b["ring"]["allreduce_s"] >= 3 * b["torus2d_bidir"]["allreduce_s"],
        "communication is under 10% of the step (bidirectional 2-D)":
            lambda b: b["torus2d_bidir"]["comm_fraction"] < 0.10,
        "the BN collectives cost at least as much as the bidirectional 2-D gradient all-reduce":
            lambda b: b["torus2d_bidir"]["bn_s"] >= b["torus2d_bidir"]["allreduce_s"],
    }
    for label, pub in published_steps_s.items():
        checks[f"the projected step is below {label}'s published step"] = \
            lambda b, pub=pub: b["torus2d_bidir"]["step_s"] < pub
    out = []
    for claim, test in checks.items():
        fails = [f"{r['input']}={r['value']}" for r in rows if not test(r["by"])]
        out.append({"claim": claim, "holds": not fails, "where_not": fails})
    return out


def comm_fraction(inputs: Inputs = Inputs(), *, chips=(16, 64, 256, 512, 1024), per_chip: int = 32,
                  epochs: float = 90) -> list[dict]:
    """Communication share of the step against chip count at ``per_chip`` images a chip (the 1024-chip runs'
    32), for each algorithm: ``project`` rows."""
    return [project({"chips": n, "batch": n * per_chip, "epochs": epochs}, inputs, alg)
            for n in chips for alg in ALGORITHMS]
