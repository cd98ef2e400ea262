"""data: input for labkit runs: the paper's tf.data pipeline, bundled offline data sets, prefetch to device.

Modules: ``tfrecords`` (ImageNet TFRecord schema), ``bundled`` (digits/photos generated on first use),
``preprocess`` (decode/crop/resize ops), ``pipeline`` (``train_dataset``/``eval_dataset`` with a switch per
optimization), ``prefetch`` (``DevicePrefetcher``, ``normalize``), ``synthetic`` (device-made batches),
``convert`` (``labkit data convert``), ``fixed`` (an in-memory batch); ``labkit bench input`` is
``labkit.bench.input``.
Importing this package is cheap: names load their module (and TensorFlow) on first use.
Must not: touch models or training state.
"""
from __future__ import annotations

import importlib

from labkit.data.fixed import digits_batch

__all__ = ["digits_batch", "train_dataset", "eval_dataset", "Switches", "LADDER", "SkipCounter",
           "DevicePrefetcher", "normalize", "synthetic_batches", "prepare", "data_dir", "DATASETS",
           "convert_image_folder"]

_LAZY = {
    "train_dataset": "pipeline", "eval_dataset": "pipeline", "Switches": "pipeline", "LADDER": "pipeline",
    "SkipCounter": "pipeline", "DevicePrefetcher": "prefetch", "normalize": "prefetch",
    "synthetic_batches": "synthetic", "prepare": "bundled", "data_dir": "bundled", "DATASETS": "bundled",
    "convert_image_folder": "convert",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"labkit.data.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'labkit.data' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
