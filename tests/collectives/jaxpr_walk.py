"""Test helper: read the collectives out of a traced program (jaxpr), recursing into jit / shard_map bodies.

Independent of labkit: it only knows jax's primitive names. ``collectives(jaxpr)`` lists every data-moving
collective with its axes (and ``perm`` for ppermute); ``hop_depth(jaxpr)`` is the longest chain of ppermutes
along data dependencies (the sequential hop count a cost model calls "steps").
"""
from __future__ import annotations


# Every primitive that moves data between devices (pvary / pcast only change a type).
MOVING = {"psum", "psum_invariant", "psum2", "pmax", "pmin", "reduce_scatter", "psum_scatter", "all_gather",
          "all_gather_invariant", "all_to_all", "ragged_all_to_all", "ppermute", "pbroadcast", "psend", "precv"}


# jax 0.10-0.12 spell some of them by how they are typed (``psum_invariant``: a result replicated over the axes).
_BASE = {"psum_invariant": "psum", "psum2": "psum", "all_gather_invariant": "all_gather",
         "reduce_scatter": "psum_scatter"}


def base_name(primitive: str) -> str:
    """The collective a primitive name stands for (``psum_invariant`` -> ``psum``), whatever the jax version."""
    return _BASE.get(primitive, primitive)


def _subjaxprs(eqn):
    for v in eqn.params.values():
        for item in (v if isinstance(v, (list, tuple)) else (v,)):
            inner = getattr(item, "jaxpr", None)  # a ClosedJaxpr wraps a Jaxpr
            if inner is not None and hasattr(inner, "eqns") and hasattr(inner, "invars"):
                yield inner
            elif hasattr(item, "eqns") and hasattr(item, "invars"):
                yield item


def _open(j):
    inner = getattr(j, "jaxpr", None)
    return inner if inner is not None and hasattr(inner, "eqns") else j


def _axes(eqn) -> tuple[str, ...]:
    a = eqn.params.get("axes", eqn.params.get("axis_name", ()))
    return tuple(a) if isinstance(a, (tuple, list)) else (a,)


def collectives(jaxpr) -> list[tuple[str, tuple[str, ...], tuple | None, tuple[int, ...]]]:
    """``[(primitive, axes, perm or None, operand shape), ...]`` in program order, nested bodies included."""
    jaxpr = _open(jaxpr)
    out = []
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in MOVING:
            perm = eqn.params.get("perm")
            out.append((name, _axes(eqn), tuple(map(tuple, perm)) if perm is not None else None,
                        tuple(eqn.invars[0].aval.shape)))
        for sub in _subjaxprs(eqn):
            out.extend(collectives(sub))
    return out


def hop_depth(jaxpr) -> int:
    """The longest chain of ``ppermute`` eqns connected by data dependencies (through nested bodies)."""
    jaxpr = _open(jaxpr)
    return max(_depths(jaxpr, [0] * len(jaxpr.invars)), default=0)


def _depths(jaxpr, in_depths) -> list[int]:
    depth = dict(zip(jaxpr.invars, in_depths))
    get = lambda v: 0 if hasattr(v, "val") else depth.get(v, 0)  # a Literal has .val and no chain  # noqa: E731
    for eqn in jaxpr.eqns:
        ins = [get(v) for v in eqn.invars]
        subs = list(_subjaxprs(eqn))
        if len(subs) == 1 and len(subs[0].invars) == len(eqn.invars) and len(subs[0].outvars) == len(eqn.outvars):
            outs = _depths(subs[0], ins)  # jit / shard_map: follow each output's own chain
        else:
            inner = max((max(_depths(s, [max(ins, default=0)] * len(s.invars)), default=0) for s in subs),
                        default=0)
            outs = [max(max(ins, default=0), inner) + (eqn.primitive.name == "ppermute")] * len(eqn.outvars)
        depth.update(zip(eqn.outvars, outs))
    return [get(v) for v in jaxpr.outvars]
