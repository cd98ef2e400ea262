"""models: the ResNet v1.5 family by name, and ``create_model`` to build one for a topology.

Owns the name -> architecture table. Must not: know about devices or training.
"""
from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp

from labkit.models.resnet import BottleneckResNetBlock, ResNet, ResNetBlock

__all__ = ["ResNet", "MODELS", "create_model", "count_params"]

_B, _BB = ResNetBlock, BottleneckResNetBlock

# ImageNet-size architectures (He et al.) and teaching variants that go through the same ResNet code.
MODELS = {
    "resnet18": functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=_B),
    "resnet34": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=_B),
    "resnet50": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=_BB),
    "resnet101": functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=_BB),
    "resnet152": functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=_BB),
    "resnet200": functools.partial(ResNet, stage_sizes=(3, 24, 36, 3), block_cls=_BB),
    # Teaching sizes: small-image stem (no 7x7/2 conv, no max-pool) for 32x32 inputs, narrow widths.
    "resnet18_small": functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=_B, small_inputs=True,
                                        num_filters=16),
    "resnet_tiny": functools.partial(ResNet, stage_sizes=(1, 1, 1), block_cls=_B, small_inputs=True,
                                     num_filters=8),
}

# float16 is not offered: without loss scaling (which labkit does not do) its gradients underflow; the paper
# trains in bfloat16, whose float32-sized exponent needs none. Config.dtype offers the same two (tested).
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def create_model(name: str, *, num_classes: int = 1000, width: float = 1.0, dtype: Any = "float32",
                 bn_axis_name=None, capture_bn: bool = False, **overrides) -> ResNet:
    """Build a model from ``MODELS`` by name.

    ``width`` multiplies the base filter count; ``dtype`` is the compute dtype ('float32' or 'bfloat16';
    parameters stay float32); ``bn_axis_name`` should be ``Topology.bn_axes``.
    """
    if name not in MODELS:
        raise ValueError(f"model: unknown name {name!r}; allowed values: {sorted(MODELS)}")
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype: {dtype!r} is not supported; allowed values: {sorted(_DTYPES)}")
        dtype = _DTYPES[dtype]
    if not width > 0:
        raise ValueError(f"width: must be > 0, got {width!r}")
    base = MODELS[name].keywords.get("num_filters", 64)
    return MODELS[name](num_classes=num_classes, num_filters=max(1, int(round(base * width))), dtype=dtype,
                        bn_axis_name=bn_axis_name, capture_bn=capture_bn, **overrides)


def count_params(params) -> int:
    """Number of trainable parameters in a params pytree."""
    import jax
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
