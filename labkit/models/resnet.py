"""models.resnet: the Flax Linen ResNet v1.5 family (18-200) and small teaching variants, one code path.

Owns the network definitions. The norm layer is injected (``labkit.bn.DistributedBatchNorm`` bound to the
topology's BN axes), so the model never knows about meshes or groups. v1.5: the stride sits on the 3x3
convolution of the bottleneck. The last BN scale of every residual block starts at zero (Goyal et al.), so
each block starts as the identity. Must not: know about devices, collectives or training.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from labkit.bn import DistributedBatchNorm

__all__ = ["ResNet", "ResNetBlock", "BottleneckResNetBlock"]

ModuleDef = Any


class ResNetBlock(nn.Module):
    """Basic block (ResNet-18/34): two 3x3 convolutions."""
    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3), self.strides)(x)
        y = self.act(self.norm()(y))
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros)(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class BottleneckResNetBlock(nn.Module):
    """Bottleneck block (ResNet-50+): 1x1 reduce, 3x3 (strided, v1.5), 1x1 expand x4."""
    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.act(self.norm()(self.conv(self.filters, (1, 1))(x)))
        y = self.act(self.norm()(self.conv(self.filters, (3, 3), self.strides)(y)))
        y = self.conv(self.filters * 4, (1, 1))(y)
        y = self.norm(scale_init=nn.initializers.zeros)(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters * 4, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    """ResNet v1.5.

    ``bn_axis_name``: mesh axes of a BN group (``Topology.bn_axes``); ``capture_bn``: record per-replica BN
    statistics in the ``'bn_stats'`` collection; ``small_inputs``: 3x3 stride-1 stem and no max-pool, for
    32x32-class images; ``dtype``: compute dtype (e.g. ``jnp.bfloat16``) with float32 parameters.
    """
    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int = 1000
    num_filters: int = 64
    small_inputs: bool = False
    dtype: Any = jnp.float32
    act: Callable = nn.relu
    bn_axis_name: Any = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    capture_bn: bool = False
    norm_cls: ModuleDef = DistributedBatchNorm

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, padding="SAME")
        norm = functools.partial(self.norm_cls, use_running_average=not train, momentum=self.bn_momentum,
                                 epsilon=self.bn_epsilon, dtype=self.dtype, axis_name=self.bn_axis_name,
                                 capture_stats=self.capture_bn)
        x = jnp.asarray(x, self.dtype)
        if self.small_inputs:
            x = conv(self.num_filters, (3, 3), name="conv_init")(x)
        else:
            x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = nn.relu(norm(name="bn_init")(x))
        if not self.small_inputs:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(self.num_filters * 2 ** i, strides=strides, conv=conv, norm=norm,
                                   act=self.act, name=f"stage{i + 1}_block{j}")(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return jnp.asarray(x, jnp.float32)  # logits in float32 for a stable softmax
