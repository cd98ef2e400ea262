"""data._tf: the one place labkit.data imports TensorFlow.

Owns the import: quiet C++ logging (``TF_CPP_MIN_LOG_LEVEL=2`` unless the user set it) and hiding GPUs/TPUs
from TensorFlow before its first op, so tf.data never grabs an accelerator that JAX needs.
Must not: be imported at ``labkit.data`` import time (``import tensorflow`` costs seconds).
"""
from __future__ import annotations

import functools
import os

__all__: list[str] = []


@functools.lru_cache(maxsize=None)
def import_tf():
    """``tensorflow``, imported once, quiet, with no accelerator visible to it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    # Python-side warnings (e.g. AutoGraph's "could not transform ... will run it as-is", harmless: the function
    # runs as written) would land as red stderr boxes in notebooks; errors still show.
    tf.get_logger().setLevel("ERROR")
    tf.autograph.set_verbosity(0)
    for kind in ("GPU", "TPU"):
        try:
            tf.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError):
            # RuntimeError: TF's runtime already started (devices are fixed); ValueError: no such device type.
            pass
    return tf
