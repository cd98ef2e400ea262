"""train.measure: honest timing for the training loop.

Owns: the MFU estimate from XLA's cost analysis, and timing the real gradient all-reduce on the real gradient shapes (compiled once per run).
Must not: decide what the loop does, or emit telemetry (the loop emits what these return).
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from labkit.mesh import Topology

__all__ = ["peak_flops_per_device", "step_flops", "make_allreduce_timer"]

# Dense bf16 peak FLOP/s per JAX device, by device_kind prefix (a TPU v3 device is one core: half a chip).
_PEAK_FLOPS = {"TPU v2": 22.5e12, "TPU v3": 61.5e12, "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5": 459e12,
               "TPU v6": 918e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12}


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
    """Published dense bf16 peak of one device, or None (CPU, unknown kinds): then no MFU is claimed."""
    kind = (device or jax.devices()[0]).device_kind
    for prefix, flops in sorted(_PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
        if kind.startswith(prefix):
            return flops
    return None


def step_flops(lowered) -> float | None:
    """FLOPs of one step per device, from XLA's cost analysis of a lowered step (``jitted.lower(...)``)."""
    try:
        cost = lowered.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):  # older jax returned one dict per computation
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def make_allreduce_timer(reducer: Callable, params, topo: Topology, repeats: int = 3) -> Callable[[], dict]:
    """A timer of ``reducer`` (a replica SUM) on zeros shaped like ``params``, inside shard_map.

    Compiled once here; each call of the returned function times ``repeats`` runs after one warm-up and returns
    ``{"bytes": payload per replica, "time_s": median, "algbw", "busbw"}`` (nccl-tests definitions).
    """
    axes = topo.replica_axes
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))
    n = topo.num_replicas

    def body(tree):
        local = jax.tree_util.tree_map(lambda v: jax.lax.pcast(v, axes, to="varying"), tree)
        return reducer(local)

    fn = jax.jit(jax.shard_map(body, mesh=topo.mesh, in_specs=P(), out_specs=P()))

    def measure() -> dict:
        jax.block_until_ready(fn(zeros))  # warm-up (compiles on the first call only)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(zeros))
            times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        algbw = nbytes / t if t > 0 else float("inf")
        return {"bytes": int(nbytes), "time_s": t, "algbw": algbw, "busbw": algbw * 2 * (n - 1) / n}

    return measure
