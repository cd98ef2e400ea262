"""train.measure: honest timing for the training loop.

Owns: MFU (FLOPs from XLA's cost analysis of the compiled program, the published peak of the dtype in use), and timing the real gradient all-reduce on the real gradient shapes (compiled once per run).
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

__all__ = ["peak_flops_per_device", "step_flops", "mfu", "make_allreduce_timer"]

# Published dense peak FLOP/s per JAX device, by device_kind prefix and compute dtype (a TPU v2/v3 device is one
# core: half a chip). float32 on NVIDIA tensor cores runs as TF32 under XLA's default precision, so its peak is
# the TF32 one. TPUs run float32 matmuls as several bf16 passes (precision-dependent): no float32 peak is claimed.
_PEAK_FLOPS = {
    "TPU v2": {"bfloat16": 22.5e12}, "TPU v3": {"bfloat16": 61.5e12}, "TPU v4": {"bfloat16": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12}, "TPU v5": {"bfloat16": 459e12}, "TPU v6": {"bfloat16": 918e12},
    "NVIDIA H100": {"bfloat16": 989.4e12, "float32": 494.7e12},
    "NVIDIA H200": {"bfloat16": 989.4e12, "float32": 494.7e12},
    "NVIDIA A100": {"bfloat16": 312e12, "float32": 156e12},
}


def peak_flops_per_device(device_kind: str | None = None, dtype: str = "bfloat16") -> tuple[float | None, str]:
    """(published dense peak of one device for ``dtype``, or None; the reason when None, else its source)."""
    kind = device_kind if device_kind is not None else jax.devices()[0].device_kind
    for prefix, peaks in sorted(_PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
        if kind.startswith(prefix):
            if dtype in peaks:
                what = "TF32 tensor-core" if dtype == "float32" else f"{dtype} dense"
                return peaks[dtype], f"{prefix} {what} peak"
            return None, f"no published {dtype} peak for {kind!r} (float32 matmuls run as bf16 passes)"
    return None, f"no published peak for device kind {kind!r}" + (" (CPU: simulation)" if kind == "cpu" else "")


def step_flops(cost: dict | None) -> float | None:
    """FLOPs of one step per device, from XLA's cost analysis of the *compiled* (optimized) step program."""
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def mfu(flops_per_step_per_device: float | None, images_per_s: float | None, global_batch: int,
        peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s per device (steps/s x FLOPs per step) over the device's peak."""
    if not (flops_per_step_per_device and images_per_s and peak):
        return None
    return flops_per_step_per_device * (images_per_s / global_batch) / peak


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
        return jax.tree_util.tree_map(lambda s: s[None], reducer(local))

    # Every replica keeps its own copy of the sum (out_specs over the replica axes, like ``collectives.all_reduce``):
    # a link-level reducer's sums are typed per-replica (every byte moved by ppermute), so out_specs=P() would fail
    # shard_map's replication check for them. Per-replica outputs keep that check on for every algorithm and move
    # nothing more: each device returns the buffer it already holds.
    fn = jax.jit(jax.shard_map(body, mesh=topo.mesh, in_specs=P(), out_specs=P(axes)))

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
