"""bench.collectives: ``labkit bench collectives``: time every all-reduce algorithm over a size sweep.

Owns the sweep (median of repeated runs after warm-up, each run ended by ``block_until_ready``; algorithms
interleaved at each size so they see the same machine load; ``bench.timer``), algbw/busbw (nccl-tests definitions), the
fusion/padding overhead (a pytree of odd-sized leaves vs one pre-padded flat buffer, same algorithm, same run),
the alpha-beta fit per algorithm, the pod projection, the printed tables, the JSON file and the ``collective``
/ ``cost_model`` telemetry events. CPU timings are labelled simulation everywhere.
Must not: implement algorithms or the cost model (it calls ``collectives`` and ``collectives.costmodel``).
"""
from __future__ import annotations

import json
import math
import os
import statistics
import sys

import numpy as np

from labkit import storage
from labkit.bench import timer

__all__ = ["HELP", "add_arguments", "run", "sweep_sizes", "run_sweep", "measure_fusion_overhead"]

HELP = "time all-reduce algorithms (xla, ring, torus2d, ...) as algbw/busbw, fit and project a cost model"
_MB = 1 << 20
_BUDGET_S = 4.0  # per size: cap repeats so the full sweep stays within minutes on 2 CPU cores


def add_arguments(p) -> None:
    from labkit.cli import add_topology_args
    from labkit.collectives import ALGORITHMS
    add_topology_args(p)
    p.add_argument("--algorithms", default=",".join(ALGORITHMS),
                   help=f"comma-separated, from {','.join(ALGORITHMS)} (default: all)")
    p.add_argument("--min-bytes", type=int, default=1024, help="smallest payload per replica (default 1 KiB)")
    p.add_argument("--max-bytes", type=int, default=128 * _MB, help="largest payload per replica (default 128 MiB)")
    p.add_argument("--factor", type=int, default=4, help="size step of the sweep (default 4)")
    p.add_argument("--no-resnet50", action="store_true",
                   help="leave out the ResNet-50 gradient size (25,557,032 fp32 values)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per point, median reported (default 10; "
                   f"fewer for big sizes, at least 3, to keep each size near {_BUDGET_S:.0f} s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs after compiling (default 2)")
    p.add_argument("--overhead-algorithm", default="torus2d",
                   help="algorithm for the fusion/padding overhead measurement ('none' to skip)")
    p.add_argument("--json", default=None, help="write the results as JSON to this path")
    p.add_argument("--workdir", default=None, help="write telemetry events to DIR/telemetry.jsonl")


def sweep_sizes(min_bytes: int, max_bytes: int, factor: int = 4, resnet50: bool = True,
                multiple_bytes: int = 4) -> list[int]:
    """Payload bytes per replica: min, min*factor, ... up to max (max included), plus ResNet-50's gradient
    (102,228,128 B fp32) when it fits; every size rounded up to ``multiple_bytes`` (pre-padded buffers)."""
    from labkit.collectives.costmodel import RESNET50_PARAMS
    if min_bytes < 4 or max_bytes < min_bytes or factor < 2:
        raise ValueError(f"sizes: need 4 <= min-bytes <= max-bytes and factor >= 2, got min={min_bytes}, "
                         f"max={max_bytes}, factor={factor}")
    sizes, s = [], min_bytes
    while s < max_bytes:
        sizes.append(s)
        s *= factor
    sizes.append(max_bytes)
    if resnet50 and RESNET50_PARAMS * 4 <= max_bytes:
        sizes.append(RESNET50_PARAMS * 4)
    return sorted({-(-b // multiple_bytes) * multiple_bytes for b in sizes})


def _time_runs(fns: dict, args: dict, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Compile + warm up each fn, then interleave timed runs so every fn sees the same load (``bench.timer``).

    The fns donate their input and return an array of the same shape, so each run's output is the next run's
    input (zeros in, zeros out): the all-reduce works in place, as on gradient buffers inside a train step.
    """
    def block(name):
        def run():
            args[name] = fns[name](args[name])
            return args[name]
        return run

    return timer.interleave({name: block(name) for name in fns}, repeats, warmup=max(1, warmup),
                            budget_s=_BUDGET_S if repeats >= 3 else None)


def _in_place(topo, algorithm: str):
    """jit(shard_map(reducer)) over rows = replicas, donating its input; link-level forms all ppermute."""
    import jax
    from jax.sharding import PartitionSpec as P
    from labkit.collectives import make_reducer
    reducer, axes = make_reducer(topo, algorithm), topo.replica_axes

    def body(tree):
        rows = reducer(jax.tree_util.tree_map(lambda b: b[0], tree))
        return jax.tree_util.tree_map(lambda r: r[None], rows)

    return jax.jit(jax.shard_map(body, mesh=topo.mesh, in_specs=P(axes), out_specs=P(axes)), donate_argnums=0)


def _filled(topo, rows: int, elems: int, dtype="float32"):
    """A global [rows, elems] array sharded over replicas, made on device (no host copy of 1 GB)."""
    import jax
    import jax.numpy as jnp
    make = jax.jit(lambda: jnp.zeros((rows, elems), dtype), out_shardings=topo.batch_sharding)
    return make()


def _row(algorithm: str, nbytes: int, times: list[float], n: int) -> dict:
    med = statistics.median(times)
    algbw = nbytes / med
    return {"algorithm": algorithm, "bytes": nbytes, "time_s": med, "min_time_s": min(times),
            "repeats": len(times), "algbw": algbw, "busbw": algbw * 2 * (n - 1) / n if n > 1 else 0.0}


def run_sweep(topo, algorithms, sizes, repeats: int = 10, warmup: int = 2) -> list[dict]:
    """Time the all-reduce of an fp32 buffer of each size per replica, for each algorithm (interleaved)."""
    n, results = topo.num_replicas, []
    fns = {a: _in_place(topo, a) for a in algorithms}
    for nbytes in sizes:
        args = {a: _filled(topo, n, nbytes // 4) for a in algorithms}
        times = _time_runs(fns, args, repeats, warmup)
        results.extend(_row(a, nbytes, times[a], n) for a in algorithms)
        del args
    return results


def _odd_leaf_sizes(total: int, count: int = 161, seed: int = 0) -> list[int]:
    """``count`` odd sizes summing to ``total`` (a few big kernels, many small vectors, like ResNet-50's 161)."""
    w = np.random.default_rng(seed).lognormal(0.0, 2.0, count)
    sizes = np.maximum(1, np.floor(w / w.sum() * total)).astype(np.int64) | 1
    sizes[int(np.argmax(sizes))] += total - int(sizes.sum())
    if sizes.min() < 1:
        raise ValueError(f"fusion overhead: cannot split {total} values into {count} leaves")
    return sizes.tolist()


def resnet50_leaf_sizes() -> list[int]:
    """Sizes of ResNet-50's 161 gradient leaves (labkit's model, 1000 classes), from shapes alone."""
    import jax
    import jax.numpy as jnp
    from labkit.models import create_model
    model = create_model("resnet50")
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
    return [int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes["params"])]


def measure_fusion_overhead(topo, algorithm: str, total_elems: int, repeats: int = 10, warmup: int = 2,
                            sizes: list[int] | None = None) -> dict:
    """Pytree path (leaves fused + padded) vs one flat pre-padded buffer of the same bytes, same algorithm.

    ``sizes``: the leaves (default: 161 odd sizes summing to ``total_elems``, a worst case for padding).
    """
    from labkit.collectives.algorithms import pad_multiple
    n = topo.num_replicas
    sizes = sizes or _odd_leaf_sizes(total_elems)
    total_elems = sum(sizes)
    tree = {f"leaf{i:03d}": _filled(topo, n, s) for i, s in enumerate(sizes)}
    m = pad_multiple(algorithm, topo)
    flat = _filled(topo, n, -(-total_elems // m) * m)
    fns = {"tree": _in_place(topo, algorithm), "flat": _in_place(topo, algorithm)}
    times = _time_runs(fns, {"tree": tree, "flat": flat}, repeats, warmup)
    t_tree, t_flat = statistics.median(times["tree"]), statistics.median(times["flat"])
    return {"algorithm": algorithm, "leaves": len(sizes), "bytes": total_elems * 4, "tree_time_s": t_tree,
            "flat_time_s": t_flat, "overhead": t_tree / t_flat - 1.0, "repeats": len(times["tree"])}


def _describe_machine(topo) -> tuple[str, bool]:
    return timer.describe_machine(topo.num_replicas)


def _fmt_bytes(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if b >= scale:
            return f"{b / scale:.4g} {unit}"
    return f"{b:.0f} B"


def _print_sweep(results, algorithms) -> None:
    print("time (ms) | busbw (GB/s), median per point")
    print(f"{'bytes':>11} " + " ".join(f"{a:>22}" for a in algorithms))
    by = {(r["algorithm"], r["bytes"]): r for r in results}
    for b in sorted({r["bytes"] for r in results}):
        cells = [f"{by[a, b]['time_s'] * 1e3:11.3f} {by[a, b]['busbw'] / 1e9:9.3f} " for a in algorithms]
        print(f"{_fmt_bytes(b):>11} " + " ".join(f"{c:>22}" for c in cells))


def _fit_all(topo, results, algorithms) -> dict:
    from labkit.collectives import costmodel
    fits = {}
    for a in algorithms:
        rows = [r for r in results if r["algorithm"] == a]
        if len(rows) < 2:
            continue
        f = costmodel.fit(topo.shape, a, [r["bytes"] for r in rows], [r["time_s"] for r in rows])
        f["bytes"] = [r["bytes"] for r in rows]
        f["measured_s"] = [r["time_s"] for r in rows]
        fits[a] = f
    return fits


def _curve(topo, fit: dict, lo: float, hi: float) -> tuple[list[float], list[float]]:
    """The fitted model evaluated on a log grid (4 points per decade), for dashboards to plot."""
    from labkit.collectives import costmodel
    net = costmodel.Network("fitted", topo.shape, costmodel.Link(fit["alpha_s"], fit["bandwidth"]),
                            costmodel.Link(fit["alpha_s"], fit["bandwidth"]))
    grid = np.logspace(math.log10(lo), math.log10(hi), max(2, int(4 * math.log10(hi / lo)) + 1))
    return grid.tolist(), [costmodel.predict(net, fit["algorithm"], b).time_s for b in grid]


def _print_fits(fits: dict) -> None:
    print("\nalpha-beta fit per algorithm (t = steps*alpha + bytes-on-the-busiest-link*beta)")
    print(f"{'algorithm':>14} {'steps':>6} {'alpha (us)':>11} {'1/beta (GB/s)':>14} {'max |model/meas-1|':>19}")
    for a, f in fits.items():
        print(f"{a:>14} {f['steps']:>6} {f['alpha_s'] * 1e6:11.2f} {f['bandwidth'] / 1e9:14.3f} "
              f"{max(abs(e) for e in f['rel_error']):19.2f}")
    sizes = next(iter(fits.values()))["bytes"] if fits else []
    print("model / measured per size:")
    print(f"{'bytes':>11} " + " ".join(f"{a:>14}" for a in fits))
    for i, b in enumerate(sizes):
        print(f"{_fmt_bytes(b):>11} " + " ".join(f"{f['predicted_s'][i] / f['measured_s'][i]:14.2f}"
                                                 for f in fits.values()))


def _print_projection(rows) -> None:
    from labkit.collectives.costmodel import MLPERF_V06_1024, PAPER
    print("\nprojection: ResNet-50 gradient all-reduce on a TPU v3 pod (32x32 chips), cost model, not measured")
    print(f"{'algorithm':>14} {'dirs':>4} {'steps':>6} {'all-reduce ms':>14} {'step ms':>8} {'M img/s':>8} "
          f"{'min to train':>13}")
    for r in rows:
        print(f"{r['algorithm']:>14} {r['directions']:>4} {r['steps']:>6} {r['allreduce_s'] * 1e3:14.3f} "
              f"{r['step_s'] * 1e3:8.2f} {r['images_per_s'] / 1e6:8.2f} {r['minutes_to_train']:13.2f}")
    print(f"inputs: fp32 gradients {rows[0]['bytes']:,} B, compute {rows[0]['compute_s'] * 1e3:.2f} ms/step "
          f"(1,952 img/s/chip, batch 32768), {rows[0]['epochs']} epochs, no overlap; paper: {PAPER['minutes']} "
          f"min / {PAPER['images_per_s'] / 1e6:.2f} M img/s; MLPerf v0.6 1024 chips: "
          f"{MLPERF_V06_1024['minutes']} min / {MLPERF_V06_1024['images_per_s'] / 1e6:.2f} M img/s")


def run(args) -> int:
    import jax
    from labkit import telemetry
    from labkit.cli import build_topology
    from labkit.collectives import ALGORITHMS, costmodel
    from labkit.collectives.algorithms import check_algorithm
    algorithms = [check_algorithm(a.strip()) for a in args.algorithms.split(",") if a.strip()]
    if not algorithms:
        raise ValueError(f"--algorithms: none given; allowed values: {list(ALGORITHMS)}")
    if args.overhead_algorithm != "none":
        check_algorithm(args.overhead_algorithm)
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    topo = build_topology(args)
    n = topo.num_replicas
    sizes = sweep_sizes(args.min_bytes, args.max_bytes, args.factor, not args.no_resnet50, 4 * 2 * n)
    machine, simulated = _describe_machine(topo)
    print(f"labkit bench collectives on jax {jax.__version__}: {machine}")
    print(f"{topo.shape[0]}x{topo.shape[1]} torus, mesh axes {dict(topo.mesh.shape)}; algorithms "
          f"{', '.join(algorithms)}; {len(sizes)} sizes {_fmt_bytes(sizes[0])}..{_fmt_bytes(sizes[-1])} per replica")
    previous = telemetry.current()
    stream = telemetry.open_run(args.workdir) if args.workdir else previous
    try:
        t0, load_before = timer.clock(), os.getloadavg()[0]
        results = run_sweep(topo, algorithms, sizes, args.repeats, args.warmup)
        load_after = os.getloadavg()[0]
        for r in results:
            stream.emit("collective", replicas=n, source="bench", simulated=simulated,
                        torus=list(topo.shape), **r)
        _print_sweep(results, algorithms)
        fits = _fit_all(topo, results, algorithms)
        for a, f in fits.items():
            grid, curve = _curve(topo, f, sizes[0], sizes[-1])
            stream.emit("cost_model", algorithm=a, alpha_s=f["alpha_s"], beta_s_per_byte=f["beta_s_per_byte"],
                        bytes=grid, time_s=curve, steps=f["steps"], torus=list(topo.shape),
                        simulated=simulated, measured_bytes=f["bytes"], measured_s=f["measured_s"])
        _print_fits(fits)
        summary = _ratios(results)
        for key, val in summary.items():
            print(f"{key}: {val['ratio']:.3f} at {_fmt_bytes(val['bytes'])}")
        overhead = None
        if args.overhead_algorithm != "none":
            total = min(costmodel.RESNET50_PARAMS, args.max_bytes // 4)
            real = resnet50_leaf_sizes() if total == costmodel.RESNET50_PARAMS else None
            overhead = {"resnet50": measure_fusion_overhead(topo, args.overhead_algorithm, total, args.repeats,
                                                            args.warmup, sizes=real) if real else None,
                        "odd_sizes": measure_fusion_overhead(topo, args.overhead_algorithm, total, args.repeats,
                                                             args.warmup)}
            for name, o in overhead.items():
                if o is None:
                    continue
                what = "ResNet-50's gradient leaves" if name == "resnet50" else "odd-sized leaves (worst case)"
                print(f"fusion/padding overhead ({o['algorithm']}, {o['leaves']} {what}, {_fmt_bytes(o['bytes'])}): "
                      f"tree {o['tree_time_s'] * 1e3:.2f} ms vs flat {o['flat_time_s'] * 1e3:.2f} ms = "
                      f"{o['overhead'] * 100:+.1f}%")
        projection = costmodel.project_resnet50(directions=1) + costmodel.project_resnet50(directions=2)
        _print_projection(projection)
        elapsed = timer.clock() - t0
        print(f"({machine}; {elapsed:.0f} s)")
    finally:
        if stream is not previous:
            stream.close()
            telemetry.use(previous)
    if args.json:
        doc = {"machine": machine, "simulated": simulated, "jax": jax.__version__, "backend": jax.default_backend(),
               "torus": list(topo.shape), "mesh_axes": dict(topo.mesh.shape), "replicas": n,
               "options": {k: v for k, v in vars(args).items() if k != "func"}, "results": results,
               "fits": fits, "ratios": summary, "fusion_overhead": overhead, "projection": projection,
               "elapsed_s": elapsed, "load": [load_before, load_after],
               "provenance": timer.provenance(" ".join(["labkit", "bench", "collectives", *sys.argv[3:]]),
                                              ("labkit/bench", "labkit/collectives"), machine)}
        if not storage.is_url(args.json):
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        storage.write_text(args.json, json.dumps(doc, indent=1))  # a local path or gs://
        print(f"json: {args.json}")
    if args.workdir:
        print(f"telemetry: {stream.path}")
    return 0


def _ratios(results) -> dict:
    """Each algorithm's median time over xla's at the ResNet-50 gradient size (else the largest), same run."""
    from labkit.collectives.costmodel import RESNET50_PARAMS
    sizes = {r["bytes"] for r in results}
    near = [b for b in sizes if abs(b - RESNET50_PARAMS * 4) < 1024]
    big = near[0] if near else max(sizes)
    at = {r["algorithm"]: r["time_s"] for r in results if r["bytes"] == big}
    if "xla" not in at:
        return {}
    return {f"{a}/xla time": {"bytes": big, "ratio": t / at["xla"]} for a, t in at.items() if a != "xla"}
