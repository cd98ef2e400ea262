"""lab: the notebooks' front door: where am I running, set the devices up, and the lab's live demos.

Owns ``setup`` (Colab TPU / Cloud TPU VM / GPU / CPU with simulated devices, defaults that adapt to the
backend) and the few teaching experiments that the notebooks run and the dashboards watch: the BN-group
sweep and the input-bound vs compute-bound feed. Each writes telemetry and returns plain numbers.
Must not: render (the dashboards do), or hold logic the library modules own (it composes them).
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import time

__all__ = ["Env", "setup", "bn_exactness", "bn_group_sweep", "feed_demo"]


@dataclasses.dataclass(frozen=True)
class Env:
    backend: str          # 'tpu' | 'gpu' | 'cpu'
    devices: int
    device_kind: str
    processes: int
    in_colab: bool
    simulated: bool       # CPU devices simulated by XLA: timings are simulation

    def __str__(self) -> str:
        where = "Colab" if self.in_colab else "this machine"
        sim = " (simulated CPU devices: timings are simulation, not hardware)" if self.simulated else ""
        return f"{where}: {self.devices} {self.backend} devices ({self.device_kind}), {self.processes} process(es){sim}"


def setup(cpu_devices: int | None = None) -> Env:
    """Detect the backend; on CPU simulate ``cpu_devices`` (default 8, env ``LABKIT_CPU_DEVICES``) devices.

    Call it first in a notebook, before any JAX computation. Safe to call again (a re-run cell).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from labkit.mesh import initialize_multihost, simulate_devices
    simulate_devices(cpu_devices or int(os.environ.get("LABKIT_CPU_DEVICES", 8)))
    initialize_multihost()
    import jax
    try:
        import google.colab  # noqa: F401
        in_colab = True
    except ImportError:
        in_colab = False
    backend = jax.default_backend()
    return Env(backend=backend, devices=jax.device_count(), device_kind=jax.devices()[0].device_kind,
               processes=jax.process_count(), in_colab=in_colab, simulated=backend == "cpu")


def bn_exactness(topo, *, per_replica: int = 4, channels: int = 5, seed: int = 0) -> dict:
    """Grouped BN on the mesh vs flax's own BatchNorm on each group's concatenated batch, on one device.

    Returns the largest absolute differences of the outputs and of the running means (float32 noise, ~1e-6).
    """
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import PartitionSpec as P

    from labkit.bn import DistributedBatchNorm
    x = np.random.default_rng(seed).normal(2.0, 3.0, (topo.num_replicas * per_replica, 3, 3, channels))
    x = x.astype(np.float32)
    axes = topo.replica_axes
    bn = DistributedBatchNorm(use_running_average=False, axis_name=topo.bn_axes)
    variables = bn.init(jax.random.key(0), x[:1])

    def body(xr):
        y, new = bn.apply(variables, xr, mutable=["batch_stats"])
        return y, new["batch_stats"]["mean"][None]

    y, means = jax.jit(jax.shard_map(body, mesh=topo.mesh, in_specs=P(axes), out_specs=(P(axes), P(axes))))(
        topo.shard_batch(x))
    ref = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    out_diff = mean_diff = 0.0
    for group in topo.bn_groups():
        rows = np.concatenate([np.arange(r * per_replica, (r + 1) * per_replica) for r in group])
        y_ref, new = ref.apply(variables, jnp.asarray(x[rows]), mutable=["batch_stats"])
        out_diff = max(out_diff, float(np.abs(np.asarray(y)[rows] - np.asarray(y_ref)).max()))
        mean_diff = max(mean_diff, float(np.abs(np.asarray(means)[group] - np.asarray(new["batch_stats"]["mean"])).max()))
    return {"groups": topo.bn_groups(), "max_output_diff": out_diff, "max_running_mean_diff": mean_diff}


def bn_group_sweep(groups=(1, 2, 4, 8), *, steps: int = 12, stream=None, shape=None) -> list[dict]:
    """Train the demo model a few steps for each BN group size; returns the BN noise each one saw.

    Noise = how much the mean each replica normalizes with varies between replicas: per layer and step, the RMS
    over replicas of (group mean - its average over all replicas), in units of the batch standard deviation,
    averaged over layers and the last half of the steps. One group spanning every replica gives exactly 0.
    Every step's ``bn_stats`` go to ``stream`` (or ``telemetry.current()``), each run tagged by a ``run`` event.
    """
    import numpy as np
    from labkit import telemetry
    from labkit.mesh import Topology
    from labkit.train.demo import run_demo
    stream = stream or telemetry.current()
    rows = []
    for g in groups:
        topo = Topology.build(shape=shape, bn_group=g)
        cursor = stream.since(2**62)[1]  # the stream's current position
        summary = run_demo(topo, steps=steps, bn_stats_every=1, batch_size=64, stream=stream, log=None)
        events = [e for e in stream.since(cursor)[0] if e["kind"] == "bn_stats" and e["step"] >= steps // 2]
        noise = statistics.fmean(
            float(np.sqrt(np.mean((np.asarray(e["group_mean"]) - np.mean(e["group_mean"])) ** 2)
                          / (np.mean(e["group_var"]) + 1e-5))) for e in events)
        rows.append({"bn_group": g, "bn_batch": g * 64 // topo.num_replicas, "noise": noise,
                     "final_loss": summary["last_loss"]})
    return rows


def feed_demo(compute_s: float, *, steps: int = 30, stream=None, batch_size: int = 64, data: str = "photos",
              image_size: int = 224) -> dict:
    """Feed ``data`` to the devices while a pretend model takes ``compute_s`` a step; returns the queue summary.

    A fast model (small ``compute_s``) finds the queue empty: input-bound. A slow one finds it full: compute-
    bound. ``input_queue`` events go to ``stream`` for the host-queue dashboard.
    """
    from labkit.data import DevicePrefetcher, train_dataset
    from labkit.mesh import Topology
    topo = Topology.build()
    ds = train_dataset(data, batch_size, image_size=image_size)
    with DevicePrefetcher(ds, topo, size=4, stream=stream) as batches:
        t0 = time.perf_counter()
        for _ in range(steps):
            next(batches)
            time.sleep(compute_s)
        elapsed = time.perf_counter() - t0
        summary = batches.summary()
    return {"compute_s": compute_s, "images_per_s": summary["images"] / elapsed,
            "input_bound_fraction": summary["input_bound_steps"] / max(1, summary["steps"]),
            "input_wait_s": summary["input_wait_s"]}
