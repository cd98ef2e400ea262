"""train.overlap: let XLA overlap the gradient all-reduce with backprop, where XLA can.

Owns two things:
  ``backprop_order(loss_fn, params)``  the parameter leaves in the order backprop produces their gradients (the
      reverse of their first use in the forward pass, read from the traced jaxpr), so the train step hands the
      reducer its buckets last-layer first: the first bucket's all-reduce can start while earlier layers are
      still being differentiated;
  ``enable_latency_hiding()``  XLA's latency-hiding scheduler on GPU. XLA reads ``XLA_FLAGS`` once, when the GPU
      client starts, so every entry point calls this before any backend exists (``labkit.cli.start_jax``, the
      hardware presets, the training loop); called later it adds nothing and warns. TPU runtimes schedule
      this way by default; never on CPU, where the simulated collectives are memcpy.
Must not: change what is summed (only the order), or touch flags on CPU.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Callable

import jax

__all__ = ["backprop_order", "latency_hiding_flags", "enable_latency_hiding"]

_GPU_FLAG = "--xla_gpu_enable_latency_hiding_scheduler=true"


def backprop_order(loss_fn: Callable, params, axis_env=()) -> list[int]:
    """Indices of ``tree_leaves(params)``, the leaf used LAST in the forward pass first.

    ``axis_env``: ``[(axis_name, size), ...]`` when ``loss_fn`` uses collectives over named axes.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    avals = [jax.ShapeDtypeStruct(jax.numpy.shape(x), jax.numpy.result_type(x)) for x in leaves]
    jaxpr = jax.make_jaxpr(lambda *xs: loss_fn(jax.tree_util.tree_unflatten(treedef, xs)),
                           axis_env=list(axis_env))(*avals).jaxpr
    first_use = {}
    for position, eqn in enumerate(jaxpr.eqns):
        for var in eqn.invars:
            if type(var).__name__ != "Literal" and var not in first_use:
                first_use[var] = position
    never = len(jaxpr.eqns)  # unused leaves (none in a ResNet) go last
    uses = [first_use.get(v, never) for v in jaxpr.invars]
    return sorted(range(len(leaves)), key=lambda i: (-uses[i], i))


def latency_hiding_flags(platform: str) -> dict[str, str]:
    """The environment additions that enable the latency-hiding scheduler on ``platform`` (none on CPU/TPU)."""
    return {"XLA_FLAGS": _GPU_FLAG} if platform in ("gpu", "cuda", "rocm") else {}


def _platform_before_start() -> str:
    """The platform JAX will start, judged without starting it: an explicit JAX_PLATFORMS, else a GPU plugin."""
    chosen = (os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or "").split(",")[0].strip()
    if chosen:
        return chosen
    if any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin")):
        return "gpu"
    return "cpu"


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a jax without it: assume not, as before
        return False


def enable_latency_hiding() -> dict[str, str]:
    """Add the latency-hiding flags for the platform about to start (a user's own flag wins); returns them.

    After a backend started, XLA would ignore them: nothing is added and a warning says so."""
    missing = {name: flag for name, flag in latency_hiding_flags(_platform_before_start()).items()
               if flag.split("=")[0] not in os.environ.get(name, "")}
    if missing and _backend_started():
        warnings.warn("enable_latency_hiding: the JAX backend already started, so XLA would ignore "
                      f"{' '.join(missing.values())}; call it (or labkit.cli.start_jax / labkit.lab.setup) "
                      "before any JAX computation", RuntimeWarning, stacklevel=2)
        return {}
    for name, flag in missing.items():
        os.environ[name] = f"{os.environ.get(name, '')} {flag}".strip()
    return missing
