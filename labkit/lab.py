"""lab: the notebooks' front door: where am I running, set the devices up, and the lab's live demos.

Owns ``setup`` (Colab TPU / Cloud TPU VM / GPU / CPU with simulated devices, defaults that adapt to the
backend) and the few teaching experiments that the notebooks run and the dashboards watch: the BN-group
sweep and the input-bound vs compute-bound feed. Each writes telemetry and returns plain numbers.
Must not: render (the dashboards do), or hold logic the library modules own (it composes them).
"""
from __future__ import annotations

import dataclasses
import os
import time

__all__ = ["Env", "setup", "bn_exactness", "bn_group_sweep", "bn_collectives", "feed_demo", "input_ladder",
           "input_reference", "input_switches", "check_input_chain",
           "torus_phases", "collective_steps", "allreduce_collectives", "resnet50_bn_layers", "pod_projection",
           "show_live"]


@dataclasses.dataclass(frozen=True)
class Env:
    """Where this kernel runs and where each kind of work goes (``plan``; see ``labkit.mesh.DevicePlan``).

    Put ``compute_label`` next to numbers from single-device work (a one-replica step, the input pipeline
    feeding a device, profiles) and ``mesh_label`` next to numbers from the mesh lessons (grouped BN,
    all-reduce algorithms, multi-replica training). ``simulated``: the mesh lessons run on simulated CPU
    devices, so their timings are simulation.
    """
    backend: str          # default backend: 'tpu' | 'gpu' | 'cpu'
    devices: int          # devices of the default backend
    device_kind: str
    processes: int
    in_colab: bool
    simulated: bool       # the mesh devices are simulated CPU devices: their timings are simulation
    plan: str = "cpu"     # 'cpu' | 'one-accelerator' | 'accelerators'
    compute_devices: tuple = ()
    mesh_devices: tuple = ()
    compute_label: str = ""
    mesh_label: str = ""
    line: str = ""        # the one line setup() printed

    def __str__(self) -> str:
        where = "Colab" if self.in_colab else "this machine"
        return (f"{where}: {self.devices} {self.backend} devices ({self.device_kind}), {self.processes} "
                f"process(es); single-device work: {self.compute_label}; mesh lessons: {self.mesh_label}")


def setup(cpu_devices: int | None = None) -> Env:
    """Detect the backend, decide the device plan, print it in one line, and return it as an ``Env``.

    CPU only: everything on ``cpu_devices`` (default 8, env ``LABKIT_CPU_DEVICES``) simulated devices. One
    accelerator: single-device work on it, mesh lessons on that many simulated CPU devices beside it. Two or
    more: everything on them. ``LABKIT_COMPUTE_DEVICES=1`` rehearses the one-accelerator plan on any machine.
    Call it first in a notebook, before any JAX computation. Safe to call again (a re-run cell).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from labkit.mesh import device_plan, simulate_devices
    from labkit.multihost import initialize_multihost
    from labkit.train.overlap import enable_latency_hiding
    simulate_devices(cpu_devices or int(os.environ.get("LABKIT_CPU_DEVICES", 8)))
    enable_latency_hiding()  # XLA reads its flags when the GPU client starts: before any backend use
    initialize_multihost()
    import jax
    try:
        import google.colab  # noqa: F401
        in_colab = True
    except ImportError:
        in_colab = False
    plan = device_plan()
    line = ("Colab " if in_colab else "") + plan.line()
    print(line)
    return Env(backend=jax.default_backend(), devices=jax.device_count(), device_kind=jax.devices()[0].device_kind,
               processes=jax.process_count(), in_colab=in_colab, simulated=plan.mesh_simulated, plan=plan.case,
               compute_devices=plan.compute, mesh_devices=plan.mesh, compute_label=plan.compute_label,
               mesh_label=plan.mesh_label, line=line)


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


def bn_group_sweep(groups=(1, 2, 4, 8), per_replica=(2, 4, 8, 16), *, trials: int = 24, channels: int = 8,
                   shape=None, seed: int = 0) -> list[dict]:
    """Measure BN-statistics noise, mean and variance, for each BN group size and per-replica batch; one row per
    pair.

    The input of a BN layer: real digits through a fixed random 3x3 conv (``channels`` outputs). For each of
    ``trials`` fresh global batches (``replicas x n`` images drawn without replacement), grouped BN runs on the
    mesh and reports, per replica and channel, the mean and variance it normalized with. Mean noise: the RMS over
    trials, replicas and channels of (that mean - the global batch's mean) / the global batch's std; variance
    noise: of (that variance - the global batch's variance) / the global batch's variance; both in float64 on
    the host. Predictions for images drawn at random (an image is the unit of sampling: its pixels are not
    independent): ``c * sqrt(1/(g n) - 1/(R n))`` = ``c * sqrt(1 - g/R) / sqrt(BN batch)`` for the mean and the
    same with ``c_var`` for the variance (``_noise_constants``: from the whole data set). Row keys:
    ``bn_group``, ``per_replica``, ``bn_batch``, ``global_batch``, ``replicas``, ``noise``, ``predicted``,
    ``var_noise``, ``var_predicted``, ``c``, ``c_var``.
    """
    import numpy as np
    from labkit.data import digits_batch
    from labkit.mesh import Topology
    images, _ = digits_batch(1797, 8)  # every image of the data set
    feats = _random_conv(images, channels, seed)
    c, c_var = _noise_constants(feats)
    rng = np.random.default_rng(seed)
    rows = []
    for g in groups:
        topo = Topology.build(shape=shape, bn_group=g)
        stats = _group_stats_fn(topo)
        r = topo.num_replicas
        for n in per_replica:
            sq, sq_var = [], []
            for _ in range(trials):
                x = feats[rng.choice(len(feats), r * n, replace=False)]
                got = np.asarray(stats(topo.shard_batch(x)), np.float64)  # [replicas, 2 (mean, var), channels]
                x64 = x.astype(np.float64)
                mu, var = x64.mean((0, 1, 2)), x64.var((0, 1, 2))
                sq.append(float(np.mean((got[:, 0] - mu) ** 2 / var)))
                sq_var.append(float(np.mean((got[:, 1] / var - 1) ** 2)))
            spread = np.sqrt(max(0.0, 1 / (g * n) - 1 / (r * n)))
            rows.append({"bn_group": g, "per_replica": n, "bn_batch": g * n, "global_batch": r * n,
                         "replicas": r, "noise": float(np.sqrt(np.mean(sq))), "predicted": float(c * spread),
                         "var_noise": float(np.sqrt(np.mean(sq_var))), "var_predicted": float(c_var * spread),
                         "c": c, "c_var": c_var})
    return rows


def _noise_constants(feats) -> tuple[float, float]:
    """(c, c_var) of BN noise for ``feats`` [images, H, W, C], images as the units of sampling, float64.

    ``c^2``: the variance between images of a channel's per-image mean over the pixel variance. ``c_var^2``: the
    variance between images of q_i = the image's mean of (x - mu)^2, over sigma^4 (mu, sigma^2: the data set's
    mean and variance of the channel); averaged over channels. The mean of m such units has relative variance
    ``c_var^2 / m``: the textbook variance of a sample variance, (mu_4 - sigma^4) / m (= 2 sigma^4 / m for normal
    data), with images in place of independent values. The group-mean term of the sample variance is second order.
    """
    import numpy as np
    x = np.asarray(feats, np.float64).reshape(len(feats), -1, feats.shape[-1])  # [images, pixels, C]
    mu, var = x.mean((0, 1)), x.var((0, 1))
    c2 = np.mean(x.mean(1).var(0) / var)
    q = np.square(x - mu).mean(1)                                               # [images, C]
    return float(np.sqrt(c2)), float(np.sqrt(np.mean(q.var(0) / var ** 2)))


def _random_conv(images, channels: int, seed: int):
    """A fixed random 3x3 'same' conv (3 -> ``channels``): the input of a first BN layer, in numpy."""
    import numpy as np
    w = np.random.default_rng(seed + 1).normal(0, 1 / 3, (3, 3, images.shape[-1], channels)).astype(np.float32)
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, wd = images.shape[1:3]
    out = np.zeros(images.shape[:3] + (channels,), np.float32)
    for i in range(3):
        for j in range(3):
            out += padded[:, i:i + h, j:j + wd] @ w[i, j]
    return out


def _group_stats_fn(topo):
    """jit(shard_map): each replica's batch in, the per-channel (mean, variance) its BN group normalized with out."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P
    from labkit.bn import DistributedBatchNorm
    bn = DistributedBatchNorm(use_running_average=False, momentum=0.0, axis_name=topo.bn_axes)

    def body(xr):  # momentum 0: the new running statistics ARE the group's (mean, biased variance) used
        c = xr.shape[-1]
        _, new = bn.apply({"batch_stats": {"mean": jnp.zeros(c), "var": jnp.ones(c)},
                           "params": {"scale": jnp.ones(c), "bias": jnp.zeros(c)}}, xr, mutable=["batch_stats"])
        return jnp.stack([new["batch_stats"]["mean"], new["batch_stats"]["var"]])[None]

    axes = topo.replica_axes
    return jax.jit(jax.shard_map(body, mesh=topo.mesh, in_specs=P(axes), out_specs=P(axes)))


def feed_demo(compute_s: float, *, steps: int = 30, stream=None, batch_size: int = 64, data: str = "photos",
              image_size: int = 224) -> dict:
    """Feed ``data`` to the devices while a pretend model takes ``compute_s`` a step; returns the queue summary.

    A fast model (small ``compute_s``) finds the queue empty: input-bound. A slow one finds it full: compute-
    bound. ``input_queue`` events go to ``stream`` for the host-queue dashboard.
    """
    from labkit.data import DevicePrefetcher, train_dataset
    from labkit.mesh import Topology
    topo = Topology.build(devices="compute")  # the input pipeline feeds the real device(s) of the plan
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


def bn_collectives(topo, *, channels: int = 16, per_replica: int = 4) -> dict:
    """The collectives of ONE grouped BN layer on ``topo``, read from traced programs (jaxprs, nothing runs).

    ``forward``: the layer applied; ``backward``: what the gradient with respect to its input adds (the
    gradient of the parameters is left out: that is the separate gradient all-reduce). Lists of
    ``labkit.traced.collectives`` entries.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import PartitionSpec as P
    from labkit import traced
    from labkit.bn import DistributedBatchNorm
    bn = DistributedBatchNorm(use_running_average=False, axis_name=topo.bn_axes)
    x = np.zeros((topo.num_replicas * per_replica, 4, 4, channels), np.float32)
    variables = bn.init(jax.random.key(0), x[:1])

    def forward(xr):
        return bn.apply(variables, xr, mutable=["batch_stats"])[0]

    def grad(xr):
        return jax.grad(lambda v: jnp.sum(jnp.square(forward(v))))(xr)

    axes = topo.replica_axes
    on_mesh = lambda f: jax.shard_map(f, mesh=topo.mesh, in_specs=P(axes), out_specs=P(axes))  # noqa: E731
    fwd = traced.collectives(on_mesh(forward), x)
    both = traced.collectives(on_mesh(grad), x)
    if [c["primitive"] for c in both[:len(fwd)]] != [c["primitive"] for c in fwd]:
        raise RuntimeError("bn_collectives: the traced gradient does not start with the forward pass")
    return {"forward": fwd, "backward": both[len(fwd):], "bn_axes": topo.bn_axes, "bn_group": topo.bn_group,
            "channels": channels}


def torus_phases(topo=None) -> list[dict]:
    """Run the three phases of the 2-D all-reduce on the mesh and report what each replica holds after each.

    Replica r contributes ``(k << R) + 2**r`` (R = replicas) to element k of a buffer of X elements (chunk k = element
    k), so every value read back names its chunk and the exact set of replicas summed into it. Phases:
    reduce-scatter along X, all-reduce along Y, all-gather along X (``collectives`` ``torus2d``). Returns
    ``[{"phase": str, "held": [[(chunk, replicas summed), ...] per replica]}]``, the start included.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax
    from jax.sharding import PartitionSpec as P
    from labkit.mesh import Topology
    topo = topo or Topology.build()
    (nx, ny), n = topo.shape, topo.num_replicas
    if n > 16:
        raise ValueError(f"torus_phases: at most 16 replicas fit the int32 encoding, got {n}")
    ax, ay, axes = topo.torus_axes.x, topo.torus_axes.y, topo.replica_axes

    def body(_):
        r = lax.axis_index(axes)
        buf = (jnp.arange(nx, dtype=jnp.int32) << n) + (jnp.int32(1) << r)
        p1 = lax.psum_scatter(buf, ax, scatter_dimension=0, tiled=True)   # reduce-scatter along X
        p2 = lax.psum(p1, ay)                                              # all-reduce along Y
        p3 = lax.all_gather(p2, ax, axis=0, tiled=True)                    # all-gather along X
        return tuple(p[None] for p in (buf, p1, p2, p3))

    out = jax.jit(jax.shard_map(body, mesh=topo.mesh, in_specs=P(axes), out_specs=(P(axes),) * 4,
                                check_vma=False))(topo.shard_batch(np.zeros((n, 1), np.int32)))
    names = ["start: own buffer, chunks c0..c%d" % (nx - 1),
             "1 reduce-scatter along X (psum_scatter)", "2 all-reduce along Y (psum)",
             "3 all-gather along X (all_gather)"]
    phases = []
    for name, arr in zip(names, out):
        held = []
        for row in np.asarray(arr).astype(np.int64):
            entries = []
            for v in row:
                mask = int(v) & ((1 << n) - 1)
                count = bin(mask).count("1")
                entries.append((int(v) >> n) // count if name.startswith("start") else ((int(v) >> n) // count, count))
            held.append([(e, 1) if isinstance(e, int) else e for e in entries])
        phases.append({"phase": name, "held": held})
    return phases


def collective_steps(algorithms=("ring", "torus2d_links", "torus2d_bidir_links"), shape=(4, 4)) -> dict:
    """Run labkit's hop-by-hop all-reduce programs on an ``shape`` torus and read back, step by step, what
    every replica holds: the picture of each collective comes from the real program, not a re-enactment.

    The program of each algorithm (``collectives.links``, the ``LINK_LEVEL`` ones) is traced, then evaluated
    equation by equation on the mesh with every ``ppermute``'s arrival kept as an extra output (the received
    piece, or its sum with the replica's own copy when the program adds it: a reduce-scatter hop). A step is
    every ``ppermute`` at the same depth of the program's chain of hops (the cost model's step count). The
    input is encoded as in ``torus_phases`` (replica r puts ``(e << R) + 2**r`` in element e), so each value
    names its element and the exact set of replicas summed into it. Runs in a fresh Python process with
    X*Y simulated CPU devices (a notebook kernel has its own, fixed device count).
    Returns ``{algorithm: {"shape", "elements", "ppermutes", "steps": [{"hops": [{"perm", "axes", "reduce"}],
    "held": [[[element, mask], ...] per replica], "counts": [[replicas summed, per element] per replica]}],
    "result": [[[element, mask], ...] per replica]}}``; ``counts`` is what each replica holds after the step
    (the largest sum it has of each element; 1 = only its own), ``held`` what arrived in the step.
    """
    import json
    import subprocess
    import sys
    from labkit.collectives.algorithms import LINK_LEVEL
    shape = tuple(int(s) for s in shape)
    bad = [a for a in algorithms if a not in LINK_LEVEL]
    if bad:
        raise ValueError(f"collective_steps: algorithm {bad[0]!r} does not move its data by ppermute; "
                         f"allowed values: {list(LINK_LEVEL)}")
    if len(shape) != 2 or min(shape) < 1 or shape[0] * shape[1] > 16:
        raise ValueError(f"collective_steps: shape must be (X, Y) with at most 16 replicas (the int32 "
                         f"encoding), got {shape}")
    code = ("import json, sys\nfrom labkit.mesh import simulate_devices\n"
            f"simulate_devices({shape[0] * shape[1]})\nfrom labkit import lab\n"
            f"json.dump(lab._collective_steps_here({list(algorithms)!r}, {shape!r}), sys.stdout)")
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"collective_steps: the {shape[0]}x{shape[1]} subprocess failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def _collective_steps_here(algorithms, shape) -> dict:
    """``collective_steps`` in this process (it must have exactly X*Y CPU devices)."""
    import jax
    import numpy as np
    from jax.sharding import PartitionSpec as P
    from labkit.collectives.algorithms import pad_multiple, reduce_flat
    from labkit.mesh import Topology
    topo = Topology.build(shape=tuple(shape))
    n, axes = topo.num_replicas, topo.replica_axes
    out = {}
    for alg in algorithms:
        length = pad_multiple(alg, topo)
        x = (np.arange(length, dtype=np.int32)[None] << n) + (np.int32(1) << np.arange(n, dtype=np.int32))[:, None]
        closed = jax.make_jaxpr(jax.shard_map(lambda b, a=alg: reduce_flat(b[0], topo, a)[None], mesh=topo.mesh,
                                              in_specs=P(axes), out_specs=P(axes), check_vma=False))(x)
        sm, = closed.jaxpr.eqns
        inner, hops = sm.params["jaxpr"], _hops(sm.params["jaxpr"])
        outer = dict(zip(closed.jaxpr.constvars, closed.consts))  # hoisted constants (ring position tables)
        sources = [outer.get(v) for v in sm.invars]

        def run(b, inner=inner, hops=hops, sources=sources):
            env = {v: b if s is None else s for v, s in zip(inner.invars, sources)}
            _eval(inner, env)
            return tuple(env[h["held"]][None] for h in hops) + (env[inner.outvars[0]],)

        got = jax.jit(jax.shard_map(run, mesh=topo.mesh, in_specs=P(axes), out_specs=P(axes), check_vma=False))(
            topo.shard_batch(x))
        decode = lambda a: [[[int(v >> n) // bin(int(v) & (2 ** n - 1)).count("1"), int(v) & (2 ** n - 1)]  # noqa: E731
                             for v in row] for row in np.asarray(a).astype(np.int64).reshape(n, -1)]
        counts = np.ones((n, length), np.int64)
        steps = []
        for depth in sorted({h["depth"] for h in hops}):
            mine = [k for k, h in enumerate(hops) if h["depth"] == depth]
            held = [sum((decode(got[k])[r] for k in mine), []) for r in range(n)]
            for r, pieces in enumerate(held):
                for e, mask in pieces:
                    counts[r, e] = max(counts[r, e], bin(mask).count("1"))
            steps.append({"hops": [{key: hops[k][key] for key in ("perm", "axes", "reduce")} for k in mine],
                          "held": held, "counts": counts.tolist()})
        out[alg] = {"shape": list(topo.shape), "elements": length, "ppermutes": len(hops), "steps": steps,
                    "result": decode(got[-1])}
    return out


def _hops(jaxpr) -> list[dict]:
    """Every ``ppermute`` of a (shard_map body) jaxpr, in program order: its depth in the chain of hops (an
    equation's depth is the largest of its inputs', +1 for a ppermute), perm, axes, and the variable that holds
    what arrived: the ``add`` that sums it into the replica's own copy (a reduce-scatter hop), else its output."""
    users: dict = {}
    for e in jaxpr.eqns:
        for v in e.invars:
            if not hasattr(v, "val"):
                users.setdefault(v, []).append(e)
    depth, hops = {}, []
    for e in jaxpr.eqns:
        d = max((depth.get(v, 0) for v in e.invars if not hasattr(v, "val")), default=0)
        if e.primitive.name == "ppermute":
            d += 1
            adds = [u for u in users.get(e.outvars[0], []) if u.primitive.name == "add"]
            axes = e.params["axis_name"]
            hops.append({"depth": d, "perm": [[int(a), int(b)] for a, b in e.params["perm"]],
                         "axes": [str(a) for a in (axes if isinstance(axes, (tuple, list)) else (axes,))],
                         "reduce": bool(adds), "held": adds[0].outvars[0] if adds else e.outvars[0]})
        for v in e.outvars:
            depth[v] = d
    return hops


def _eval(jaxpr, env: dict) -> None:
    """Evaluate ``jaxpr``'s equations in order, binding each primitive again (as ``jax.core.eval_jaxpr``
    does), keeping every intermediate value in ``env``."""
    read = lambda v: v.val if hasattr(v, "val") else env[v]  # noqa: E731 - a Literal carries its value
    for e in jaxpr.eqns:
        params = e.primitive.get_bind_params(e.params)
        subfuns, params = params if isinstance(params, tuple) else ((), params)  # jax 0.10: (subfuns, params)
        with e.ctx.manager:
            outs = e.primitive.bind(*subfuns, *map(read, e.invars), **params)
        for v, o in zip(e.outvars, outs if e.primitive.multiple_results else [outs]):
            env[v] = o


def input_ladder(data: str = "photos", *, rounds: int = 3, seconds: float = 1.5, batch_size: int = 64,
                 rungs=None, extra: dict | None = None, ceiling: bool = True, log=None) -> dict:
    """The input ladder measured as ``labkit bench input`` does (``labkit.bench.input.measure_ladder``): the
    ceiling and every rung (and each ``extra`` name -> dataset) in ``rounds`` interleaved rounds of ``seconds``
    each, a rung's figure its best round. Adds ``summary`` (``bench.input.summarize``: x naive, x ceiling, and
    which steps are within noise, from the paired rounds) when the ceiling was measured."""
    from labkit.bench import input as bench
    results = bench.measure_ladder(data, batch_size=batch_size, seconds=seconds, rounds=rounds, rungs=rungs,
                                   extra=extra, ceiling=ceiling, log=log or (lambda *a, **k: None))
    if ceiling:
        results["summary"] = bench.summarize(results)
    return results


_REFERENCE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks", "reference")


def input_reference(path: str | None = None, *, missing_ok: bool = False) -> dict | None:
    """The committed reference run of the input ladder (``labkit bench input --json``; default
    ``notebooks/reference/02_input_ladder.json``), with its ``summary`` recomputed from its rounds.

    Raises ``FileNotFoundError`` (naming the path) where the file is missing (e.g. labkit installed without the
    repository; ``missing_ok``: returns None instead) and ``ValueError`` naming the missing keys where it is not
    such a run."""
    import json
    from labkit import storage
    from labkit.bench import input as bench
    path = path or os.path.join(_REFERENCE_DIR, "02_input_ladder.json")
    if not storage.exists(path):
        if missing_ok:
            return None
        raise FileNotFoundError(f"input reference: no file at {path!r}; it is committed in the repository's "
                                "notebooks/reference/ (write one with: labkit bench input --json PATH)")
    with storage.open_file(path, "r") as f:
        results = json.load(f)
    needed = ("rungs", "ceiling", "rounds", "seconds", "batch_size", "load", "provenance")
    missing = [k for k in needed if k not in results]
    if missing or not results["rungs"] or not isinstance(results["ceiling"], dict):
        raise ValueError(f"input reference {path!r}: missing {missing or ['rungs/ceiling']}; allowed: the JSON "
                         f"of `labkit bench input --json` (keys {list(needed)})")
    results["summary"] = bench.summarize(results)
    return results


def input_switches(switches: dict, data: str = "photos", *, rounds: int = 2, seconds: float = 0.8,
                   batch_size: int = 64) -> dict:
    """A brief re-measure for the rung switches: naive, the naive pipeline with ``switches`` (name -> bool, the
    ladder's switches) turned on, and the full pipeline, in ``rounds`` interleaved rounds (best round counts).
    Returns ``{"switches": the ones on, "modes": [{"name", "img_s", "rounds"}], "load", "seconds", "rounds"}``."""
    import dataclasses
    from labkit.data import pipeline
    naive = dict(pipeline.LADDER)["naive"]
    names = [n for n in pipeline.LADDER[-1][1].added(naive)]
    unknown = sorted(set(switches) - set(names))
    if unknown:
        raise ValueError(f"switches: {unknown} unknown; allowed: {names}")
    chosen = dataclasses.replace(naive, **{k: bool(v) for k, v in switches.items()})
    on = [n for n in names if getattr(chosen, n)]
    label = "your switches: " + (", ".join(on) if on else "none (= naive)")
    ds = pipeline.train_dataset(data, batch_size, switches=chosen, process_index=0, process_count=1)
    results = input_ladder(data, rounds=rounds, seconds=seconds, batch_size=batch_size,
                           rungs=["naive", pipeline.LADDER[-1][0]], extra={label: ds}, ceiling=False)
    modes = results["rungs"][:1] + results["extra"] + results["rungs"][1:]
    return {"switches": on, "modes": [{k: m[k] for k in ("name", "img_s", "rounds")} for m in modes],
            "load": results["load"], "others_cores": results["others_cores"], "seconds": seconds, "rounds": rounds,
            "cores": results["cores"]}


def check_input_chain(make_chain, data: str = "photos", *, batch_size: int = 32, image_size: int = 224) -> dict:
    """Check a from-scratch tf.data chain against labkit's: ``make_chain(files, batch_size, image_size,
    epochs=1)`` over the validation files must give batches ``(images [B, S, S, 3], labels [B] int32)`` holding
    exactly the (label, image) pairs of ``labkit.data.eval_dataset`` (centre crop 224/256, fused decode,
    bicubic resize, 0-based labels), each once, in any order: a dropped, repeated, mislabelled or differently
    cropped image fails. Returns ``{"spec_ok", "same", "images", "missing", "extra", "spec"}``."""
    import collections
    import hashlib
    import numpy as np
    from labkit.data import eval_dataset, pipeline
    from labkit.data._tf import import_tf
    tf = import_tf()
    files, _ = pipeline.resolve_files(data, "validation")
    chain = make_chain(files, batch_size, image_size, epochs=1)
    spec = chain.element_spec
    spec_ok = (isinstance(spec, tuple) and len(spec) == 2 and spec[0].shape.as_list()[1:] == [image_size,
               image_size, 3] and spec[1].dtype == tf.int32 and spec[1].shape.rank == 1)
    dtype = spec[0].dtype if spec_ok else tf.float32

    def key(image, label):  # the image as the chain's dtype would hold it, then its bytes
        pixels = np.asarray(tf.cast(tf.cast(image, dtype), tf.float32))
        return int(label), hashlib.sha1(pixels.tobytes()).hexdigest()

    theirs = collections.Counter()
    if spec_ok:
        for images, labels in chain:
            theirs.update(key(i, lab) for i, lab in zip(images, labels))
    ours = collections.Counter()
    host_dtype = pipeline.Switches(bfloat16=dtype == tf.bfloat16)  # labkit's host cast, as the chain's
    for batch in eval_dataset(data, batch_size, image_size=image_size, switches=host_dtype, process_index=0,
                              process_count=1):
        ours.update(key(i, lab) for i, lab, m in zip(batch["image"], batch["label"], batch["mask"]) if m)
    missing, extra = sum((ours - theirs).values()), sum((theirs - ours).values())
    return {"spec_ok": spec_ok, "same": spec_ok and not missing and not extra, "images": sum(ours.values()),
            "missing": missing, "extra": extra, "spec": str(spec)}


def resnet50_bn_layers() -> list[int]:
    """The channel count of every BN layer of labkit's ResNet-50 (from shapes alone: nothing is computed)."""
    import jax
    import numpy as np
    from labkit.models import create_model
    model = create_model("resnet50", num_classes=1000)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 224, 224, 3), np.float32),
                                               train=False))
    from flax.traverse_util import flatten_dict
    flat = flatten_dict(shapes["batch_stats"])
    return [int(v.shape[-1]) for k, v in sorted(flat.items()) if k[-1] == "mean"]


def pod_projection(run: str = "paper", *, algorithms=("ring", "torus2d", "torus2d_bidir"), **inputs) -> list[dict]:
    """The ResNet-50 step of a published run (``"paper"``: the 2.2-minute run; ``"mlperf_v06"``: MLPerf v0.6's
    1.28 minutes), projected from stated inputs and set beside its published result (one row per algorithm:
    ``labkit.collectives.project.compare``). ``inputs``: fields of ``project.Inputs`` (``chip_images_per_s``,
    ``alpha_s``, ``bandwidth``, ``bn_group`` in replicas, ``bn_form``, ...; ``project.SOURCES`` says where each
    default comes from). Nothing is solved to match the published result: it only sets the error columns."""
    from labkit.collectives import project
    unknown = sorted(set(inputs) - {f.name for f in dataclasses.fields(project.Inputs)})
    if unknown:
        raise ValueError(f"pod_projection: unknown inputs {unknown}; allowed values: "
                         f"{[f.name for f in dataclasses.fields(project.Inputs)]}")
    return [project.compare(run, project.Inputs(**inputs), alg) for alg in algorithms]


def allreduce_collectives(topo, algorithm: str, *, elements: int = 4096) -> list[dict]:
    """The collectives of one ``algorithm`` all-reduce of ``elements`` fp32 values per replica on ``topo``,
    read from the traced program (``labkit.traced``; nothing runs)."""
    import numpy as np
    from labkit import traced
    from labkit.collectives import all_reduce
    x = topo.shard_batch(np.zeros((topo.num_replicas, elements), np.float32))
    return traced.collectives(lambda: all_reduce(x, topo, algorithm))  # x concrete: placed, then traced


def show_live(run, *, label: str = ""):
    """Show a training run live in this notebook's front end: labkit's Panel dashboard in JupyterLab / Jupyter /
    VS Code, a self-updating figure in Colab (``labkit.live``). ``summary = await live.follow()`` then waits for
    the run without blocking the kernel's event loop (so the view stays live under "Run all") and replaces the
    live view by the run's static figure, which is what a saved notebook stores."""
    from labkit import live
    return live.show(run, label=label)
