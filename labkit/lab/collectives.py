"""lab.collectives: notebooks 03 and 05's views of the all-reduce: the torus phases, each algorithm's program replayed
hop by hop (16 devices in a subprocess), the collectives a program holds, and the pod projection's entry point.

Must not: render (``labkit.figures`` does) or define algorithms (``labkit.collectives`` owns them).
"""
from __future__ import annotations

import dataclasses
import os

__all__ = ["torus_phases", "collective_steps", "allreduce_collectives", "resnet50_bn_layers", "pod_projection",
           "PAIRS", "pair_ratios", "collective_reference"]


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
            f"simulate_devices({shape[0] * shape[1]})\nfrom labkit.lab import collectives\n"
            f"json.dump(collectives._collective_steps_here({list(algorithms)!r}, {shape!r}), sys.stdout)")
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


# The like-for-like pairs 03 compares: (slower by the hop count, faster, why).
PAIRS = (("ring", "torus2d_links", "hand-written ppermutes, 14 hops vs 8"),
         ("torus2d_bidir", "torus2d", "XLA collectives, 6 vs 3"))


def pair_ratios(results, pairs=PAIRS) -> dict:
    """``{"slow/fast": {"bytes": [...], "ratio": [...]}}``: best-of-rounds time of each pair's first algorithm over
    its second at every size both were measured at (``bench.collectives.run_sweep`` rows)."""
    best = {(r["algorithm"], r["bytes"]): r["min_time_s"] for r in results}
    out = {}
    for slow, fast, _ in pairs:
        sizes = sorted(b for (a, b) in best if a == slow and (fast, b) in best)
        out[f"{slow}/{fast}"] = {"bytes": sizes, "ratio": [best[slow, b] / best[fast, b] for b in sizes]}
    return out


def collective_reference(path: str | None = None, *, missing_ok: bool = False) -> dict | None:
    """The committed reference run of 03's sweep (``labkit bench collectives --json``; default
    ``labkit/results/03_collective_sweep.json``) with its ``ratios`` (``pair_ratios``) recomputed from its rows.
    ``FileNotFoundError`` naming the path where it is missing (``missing_ok``: None); ``ValueError`` naming the
    missing keys where the file is not such a run."""
    from labkit.lab import _reference
    doc = _reference.read("03_collective_sweep.json", path, what="collective reference",
                          command="labkit bench collectives", needed=("results", "machine", "load", "provenance"),
                          missing_ok=missing_ok, detail="results[].min_time_s",
                          valid=lambda doc: all("min_time_s" in r for r in doc["results"]))
    if doc is None:
        return None
    return {**doc, "ratios": pair_ratios(doc["results"])}

