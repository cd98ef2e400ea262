"""Synthetic telemetry for the dashboard tests: every documented kind, with values known in closed form."""
from __future__ import annotations

import math

from labkit import telemetry

LAYERS = ("bn_init", "stage1/bn0", "stage2/bn0")
ALGORITHMS = ("ring", "torus_2d")
SIZES = [2 ** k for k in range(10, 25, 2)]
ALPHA = {"ring": 2e-5, "torus_2d": 1e-5}
BETA = {"ring": 1e-9, "torus_2d": 5e-10}


def groups_of(replicas: int, bn_group: int) -> list[list[int]]:
    """Contiguous BN groups (what labkit.mesh builds for a row-major torus when bn_group divides a row)."""
    return [list(range(g, g + bn_group)) for g in range(0, replicas, bn_group)]


def noise(bn_group: int) -> float:
    """The synthetic group_vs_running: BN noise falls as 1/sqrt(group size)."""
    return 0.2 / math.sqrt(bn_group)


def emit_run_start(stream: telemetry.EventStream, *, bn_group: int = 2, torus=(2, 4), **extra) -> None:
    stream.emit("run", phase="start", model="synthetic", replicas=torus[0] * torus[1], torus=list(torus),
                bn_group=bn_group, global_batch=64, backend="cpu", simulated=True, **extra)


def emit_steps(stream: telemetry.EventStream, start: int, stop: int, *, bn_group: int = 2, replicas: int = 8,
               hosts: int = 2, bn_every: int = 5, eval_every: int = 20) -> None:
    """Steps [start, stop): step, bn_stats, input_queue per host, train collective, eval."""
    for i in range(start, stop):
        stream.emit("step", step=i, loss=loss_at(i), accuracy=min(1.0, i / 100), lr=0.1,
                    images_per_s=1000.0 + i, step_time_s=0.064, input_wait_s=0.001, compile=i < 2)
        if i % bn_every == 0:
            for layer_index, layer in enumerate(LAYERS):
                stream.emit("bn_stats", step=i, **bn_record(layer_index, layer, bn_group, replicas))
        for host in range(hosts):
            stream.emit("input_queue", step=i, depth=float((i + host) % 9), capacity=8, wait_s=0.002 * host,
                        images_per_s_in=500.0 + host, images_per_s_out=480.0, skipped=i // 10,
                        input_bound=(i + host) % 4 == 0, **({"host": host} if host else {}))
        stream.emit("collective", step=i, algorithm="torus_2d", bytes=4 * 20000, time_s=0.001 + i * 1e-6,
                    algbw=1.0, busbw=1.75, replicas=replicas, source="train")
        if eval_every and i and i % eval_every == 0:
            stream.emit("eval", step=i, top1=min(1.0, i / 100), top5=1.0, count=1000, eval_time_s=0.5)


def loss_at(i: int) -> float:
    return 2.3 * math.exp(-i / 50)


def bn_record(layer_index: int, layer: str, bn_group: int, replicas: int) -> dict:
    vs_group = [0.01 * (layer_index + 1) * (1 + r % bn_group) for r in range(replicas)]
    return {"layer": layer, "groups": groups_of(replicas, bn_group),
            "replica_mean": [0.0] * replicas, "replica_var": [1.0] * replicas,
            "group_mean": [0.0] * replicas, "group_var": [1.0] * replicas,
            "running_mean": [0.0] * replicas, "running_var": [1.0] * replicas,
            "replica_vs_group": vs_group, "group_vs_running": [noise(bn_group)] * replicas,
            "replica_vs_running": [v + noise(bn_group) for v in vs_group]}


def emit_bench(stream: telemetry.EventStream, replicas: int = 8) -> None:
    """Benchmark points on an exact alpha-beta line per algorithm, then the fitted models' curves."""
    for algorithm in ALGORITHMS:
        for size in SIZES:
            t = ALPHA[algorithm] + BETA[algorithm] * size
            stream.emit("collective", algorithm=algorithm, bytes=size, time_s=t, algbw=size / t,
                        busbw=2 * (replicas - 1) / replicas * size / t, replicas=replicas, source="bench")
        stream.emit("cost_model", algorithm=algorithm, alpha_s=ALPHA[algorithm], beta_s_per_byte=BETA[algorithm],
                    bytes=SIZES, time_s=[ALPHA[algorithm] + BETA[algorithm] * s for s in SIZES])


def emit_full_run(stream: telemetry.EventStream, steps: int = 60, *, bn_group: int = 2) -> None:
    emit_run_start(stream, bn_group=bn_group)
    emit_bench(stream)
    emit_steps(stream, 0, steps, bn_group=bn_group)
    stream.emit("run", phase="end", steps=steps, time_to_accuracy_s=12.5, simulated=True)
