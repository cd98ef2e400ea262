"""traced: what a traced JAX program communicates, and the few lines of library code that do it.

Owns reading collectives out of a jaxpr (``collectives``: walks the equations, sub-jaxprs included, and lists
every cross-device primitive with its mesh axes, operand shapes and bytes), a one-line-per-collective text form
(``format_collectives``), and ``excerpt``: the real source lines of a library function, for the notebooks.
Never parses HLO text (its format changes between jax versions). Must not: run or compile anything (tracing
only), or decide what the program should communicate (tests and notebooks compare with their own expectations).
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import jax
import numpy as np

__all__ = ["COMMUNICATING", "collectives", "format_collectives", "excerpt"]

# Primitives that move data between devices. ``pvary``/``pcast`` (type casts, no data movement) are not here.
# Names differ across jax 0.10-0.12 (``psum`` vs ``psum_invariant``, ``reduce_scatter`` vs ``psum_scatter``).
COMMUNICATING = frozenset({
    "psum", "psum2", "psum_invariant", "pmax", "pmin", "pmean", "ppermute", "all_gather",
    "all_gather_invariant", "all_to_all", "psum_scatter", "reduce_scatter",
})
_SHORT = {"psum_invariant": "psum", "psum2": "psum", "all_gather_invariant": "all_gather",
          "reduce_scatter": "psum_scatter"}


def collectives(fn: Callable, *args: Any, **kwargs: Any) -> list[dict]:
    """Trace ``fn(*args, **kwargs)`` (no compile, no run) and list its collectives in program order.

    Each entry: ``primitive`` (the short name: psum, psum_scatter, all_gather, ppermute, ...), ``axes``
    (mesh axis names, a tuple), ``shapes`` (operand shapes as strings), ``bytes`` (operand bytes per device),
    and for ``ppermute`` the number of ``pairs`` (source, destination) it sends.
    """
    closed = jax.make_jaxpr(fn)(*args, **kwargs)
    found: list[dict] = []
    _walk(closed.jaxpr, found)
    return found


def _walk(jaxpr, found: list[dict]) -> None:
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in COMMUNICATING:
            axes = eqn.params.get("axes", eqn.params.get("axis_name", ()))
            axes = tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)
            avals = [v.aval for v in eqn.invars if hasattr(v.aval, "shape")]
            entry = {"primitive": _SHORT.get(name, name), "axes": tuple(str(a) for a in axes),
                     "shapes": [f"{a.dtype}{list(a.shape)}" for a in avals],
                     "bytes": int(sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in avals))}
            if name == "ppermute":
                entry["pairs"] = len(eqn.params.get("perm", ()))
            found.append(entry)
        for sub in _sub_jaxprs(eqn.params):
            _walk(sub, found)


def _sub_jaxprs(params: dict):
    """Jaxprs nested in an equation's parameters (shard_map, pjit, scan, cond branches, custom_vjp ...)."""
    for value in params.values():
        for item in (value if isinstance(value, (tuple, list)) else (value,)):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr


def format_collectives(found: list[dict], *, title: str = "", detail: bool = True) -> str:
    """One line per collective (``psum over ('yi',): float32[2, 16], 128 B``) and a count by primitive;
    ``detail=False``: only the count, by primitive and axes, on one line."""
    if not detail:
        groups: dict[tuple, list[int]] = {}
        for c in found:
            groups.setdefault((c["primitive"], c["axes"]), []).append(c["bytes"])
        text = "; ".join(f"{len(b)} {p} over {a} ({sum(b):,} B)" for (p, a), b in groups.items())
        return f"{title}{': ' if title else ''}{text or 'no collectives'}"
    lines = [title] if title else []
    for c in found:
        pairs = f", {c['pairs']} send/receive pairs" if "pairs" in c else ""
        lines.append(f"  {c['primitive']:12s} over {c['axes']}: {', '.join(c['shapes'])}, {c['bytes']:,} B{pairs}")
    counts: dict[str, int] = {}
    for c in found:
        counts[c["primitive"]] = counts.get(c["primitive"], 0) + 1
    summary = ", ".join(f"{n} {p}" for p, n in counts.items()) or "no collectives"
    lines.append(f"  = {summary}")
    return "\n".join(lines)


def excerpt(obj: Any, start: str | None = None, end: str | None = None) -> str:
    """The real source of ``obj`` (a function, method or class), from the first line containing ``start`` to
    the first later line containing ``end`` (both included; defaults: the whole source), dedented."""
    lines = inspect.getsource(obj).splitlines()
    first = 0 if start is None else _find(lines, start, 0, obj)
    last = len(lines) - 1 if end is None else _find(lines, end, first, obj)
    chunk = lines[first:last + 1]
    indent = min((len(s) - len(s.lstrip()) for s in chunk if s.strip()), default=0)
    name = getattr(obj, "__qualname__", repr(obj))
    module = getattr(inspect.getmodule(obj), "__name__", "?")
    return f"# {module}.{name}\n" + "\n".join(s[indent:] for s in chunk)


def _find(lines: list[str], text: str, begin: int, obj: Any) -> int:
    for i in range(begin, len(lines)):
        if text in lines[i]:
            return i
    raise ValueError(f"excerpt: {text!r} not found in the source of {getattr(obj, '__qualname__', obj)!r} "
                     f"(after line {begin}); pass a string that occurs in it")
