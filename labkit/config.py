"""config: the one validated description of a run: every knob, checked up front.

Owns ``Config`` (a frozen dataclass), parsing of ``key=value`` overrides (CLI ``--set``, papermill ``-p``), and
validation with errors that name the key, the value seen and the allowed values. Checks that need the device
count (batch divisibility, BN groups that tile the torus) run in ``check_for(num_replicas)``.
Must not: build topologies, models or pipelines (it only describes them).
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any

__all__ = ["Config", "ALLOWED", "ConfigError"]

# Discrete choices, by key. Keep in sync with the modules that implement them (tested).
ALLOWED: dict[str, tuple] = {
    "model": ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200",
              "resnet18_small", "resnet_tiny"),
    "dataset": ("digits", "fashion_mnist", "photos", "synthetic", "tfrecords", "tfds"),
    "allreduce": ("xla", "ring", "torus2d", "torus2d_bidir", "hierarchical", "torus2d_links",
                  "torus2d_bidir_links"),
    "dtype": ("float32", "bfloat16"),
    "optimizer": ("sgd", "lars"),
    "lr_schedule": ("poly", "step"),
    # "" = every input optimization on; else a rung of labkit.data.LADDER ("naive", or "+ NAME" given as NAME)
    "input_rung": ("", "naive", "interleave", "parallel_map", "fused_crop", "cache", "bfloat16", "prefetch",
                   "private_threadpool"),
}


class ConfigError(ValueError):
    """A config value is invalid; the message names the key, the value and what is allowed."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of a training run. Defaults are the `cpu8-digits` lab run; presets live in labkit.presets."""
    # Model
    model: str = "resnet18_small"
    width: float = 1.0
    dtype: str = "float32"                 # compute dtype; parameters stay float32
    # Data
    dataset: str = "digits"
    data_dir: str = ""                     # tfrecords: folder with train-*/validation-*; bundled: cache ("" = default)
    num_classes: int = 0                   # 0: from the data set
    image_size: int = 32
    label_offset: int = -1                 # stored label - this = class; -1: from labkit-info.json, else 1 (ImageNet)
    train_images: int = 0                  # 0: from the data set (sets the epoch length)
    crop_area_min: float = 0.08            # random crop's minimum share of the image area (paper: 0.08)
    random_flip: bool = True               # random left-right flips (off for digits: mirrored digits mislead)
    # Topology
    cpu_devices: int = 8                   # simulated devices when the backend is CPU
    shape: str = ""                        # torus "XxY"; "" = most square
    bn_group: int = 2
    allreduce: str = "torus2d"
    # Batch and optimizer
    global_batch: int = 128
    optimizer: str = "sgd"                 # sgd = Nesterov momentum; lars for batches >= 16K
    base_lr: float = 0.1                   # peak LR = base_lr * global_batch / 256 (linear scaling) ...
    peak_lr: float = 0.0                   # ... unless peak_lr > 0 is given
    lr_schedule: str = "poly"              # poly: linear warmup, then polynomial decay to 0; step: /10 at step_epochs
    warmup_epochs: float = 2.0
    decay_power: float = 2.0
    step_epochs: tuple = (30.0, 60.0, 80.0)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    epochs: float = 30.0
    # Cadence
    eval_every_epochs: float = 1.0
    target_accuracy: float = 0.0           # stop early once top-1 >= this (0: never)
    checkpoint_every_steps: int = 0        # 0: at every evaluation
    keep_checkpoints: int = 2
    log_every_steps: int = 1
    steps_per_loop: int = 1                # K steps per host call (the paper's iterations_per_loop); <= log_every
    bn_stats_every_steps: int = 20
    collective_every_steps: int = 100      # time the real gradient all-reduce every N steps (0: never)
    seed: int = 0
    # Input pipeline
    prefetch: int = 2                      # device batches queued ahead
    input_rung: str = ""                   # host pipeline: "" = all optimizations; a LADDER rung for ablations
    cache_records: bool = True             # keep this host's raw train records in RAM (off: more data than RAM)
    deterministic: bool = True             # reproducible order (needed for exact resume)

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = hints[f.name]
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
            elif expected is tuple and isinstance(value, list):
                object.__setattr__(self, f.name, tuple(float(v) for v in value))
            elif not _is_type(value, expected):
                raise ConfigError(f"config.{f.name}: expected {expected.__name__}, got {value!r}")
        for key, allowed in ALLOWED.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"config.{key}: {getattr(self, key)!r} is not allowed; allowed values: "
                                  f"{list(allowed)}")
        _check_range(self, "width", lo=0, lo_open=True)
        _check_range(self, "image_size", lo=8)
        _check_range(self, "global_batch", lo=1)
        _check_range(self, "bn_group", lo=1)
        _check_range(self, "cpu_devices", lo=1)
        _check_range(self, "epochs", lo=0, lo_open=True)
        _check_range(self, "warmup_epochs", lo=0)
        _check_range(self, "eval_every_epochs", lo=0, lo_open=True)
        _check_range(self, "target_accuracy", lo=0, hi=1)
        _check_range(self, "crop_area_min", lo=0, hi=1, lo_open=True)
        _check_range(self, "label_smoothing", lo=0, hi=1, hi_open=True)
        _check_range(self, "momentum", lo=0, hi=1, hi_open=True)
        _check_range(self, "label_offset", lo=-1)
        for key in ("base_lr", "peak_lr", "weight_decay", "decay_power", "num_classes", "train_images",
                    "checkpoint_every_steps", "bn_stats_every_steps", "collective_every_steps",
                    "log_every_steps", "prefetch"):
            _check_range(self, key, lo=0)
        _check_range(self, "keep_checkpoints", lo=1)
        _check_range(self, "steps_per_loop", lo=1)
        if self.steps_per_loop > max(1, self.log_every_steps):
            raise ConfigError(f"config.steps_per_loop: {self.steps_per_loop} exceeds log_every_steps "
                              f"({self.log_every_steps}): the host reads metrics every {self.log_every_steps} "
                              f"steps, so no more can run per host call; allowed: 1..{max(1, self.log_every_steps)}")
        if self.warmup_epochs >= self.epochs and self.lr_schedule == "poly":
            raise ConfigError(f"config.warmup_epochs: {self.warmup_epochs} must be < epochs ({self.epochs})")
        if self.shape:
            parts = self.shape.lower().split("x")
            if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
                raise ConfigError(f"config.shape: expected 'XxY' such as '2x4' (or '' for automatic), "
                                  f"got {self.shape!r}")
        if self.data_dir and self.dataset in ("digits", "photos", "synthetic"):  # never silently ignored
            raise ConfigError(f"config.data_dir: {self.data_dir!r} is not read by the bundled dataset "
                              f"{self.dataset!r}; allowed: '' (bundled data is cached in $LABKIT_DATA_DIR), or "
                              "dataset 'tfrecords' / 'tfds' to read data_dir")
        if self.dataset == "tfrecords" and not self.data_dir:
            raise ConfigError("config.data_dir: dataset 'tfrecords' needs data_dir (a folder holding "
                              "train-* and validation-* TFRecord files)")

    # ----------------------------------------------------------------------------------------------------
    def check_for(self, num_replicas: int, allowed_bn_groups: list[int] | None = None) -> None:
        """Checks that depend on the machine: batch divisibility and BN groups that tile the torus."""
        if self.global_batch % num_replicas:
            raise ConfigError(f"config.global_batch: {self.global_batch} is not divisible by the {num_replicas} "
                              f"replicas; allowed: multiples of {num_replicas}")
        if allowed_bn_groups is not None and self.bn_group not in allowed_bn_groups:
            raise ConfigError(f"config.bn_group: {self.bn_group} does not tile the {self.shape or 'default'} "
                              f"torus of {num_replicas} replicas; allowed values: {allowed_bn_groups}")

    @property
    def learning_rate(self) -> float:
        """Peak learning rate: ``peak_lr`` if set, else the linear scaling rule ``base_lr * batch / 256``."""
        return self.peak_lr if self.peak_lr > 0 else self.base_lr * self.global_batch / 256

    def replace(self, **changes) -> "Config":
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"config: unknown key(s) {unknown}; allowed keys: {self.keys()}")
        return dataclasses.replace(self, **changes)

    def override(self, assignments: list[str] | dict[str, Any]) -> "Config":
        """Apply ``["key=value", ...]`` (strings parsed by the field's type) or a dict of values."""
        if isinstance(assignments, dict):
            return self.replace(**{k: _parse(self, k, v) if isinstance(v, str) else v
                                   for k, v in assignments.items()})
        changes = {}
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"config: override {item!r} is not key=value; allowed keys: {self.keys()}")
            key, raw = item.split("=", 1)
            changes[key.strip()] = _parse(self, key.strip(), raw.strip())
        return self.replace(**changes)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        return cls().replace(**d)

    def differences(self, other: "Config", ignore: tuple[str, ...] = ()) -> dict[str, tuple]:
        """Keys whose values differ: ``{key: (self_value, other_value)}``."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if k not in ignore and a[k] != b[k]}


def _is_type(value, expected) -> bool:
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, float) and math.isfinite(value)
    if expected is tuple:
        return isinstance(value, tuple) and all(isinstance(v, (int, float)) for v in value)
    return isinstance(value, expected)


def _check_range(cfg, key, lo=None, hi=None, lo_open=False, hi_open=False):
    v = getattr(cfg, key)
    bad = (lo is not None and (v < lo or (lo_open and v == lo))) or \
          (hi is not None and (v > hi or (hi_open and v == hi)))
    if bad:
        lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
        raise ConfigError(f"config.{key}: {v!r} is out of range; allowed: {' and '.join(s for s in (lo_s, hi_s) if s)}")


def _parse(cfg: Config, key: str, raw: str):
    """Parse a string by the type of field ``key``."""
    hints = typing.get_type_hints(Config)
    if key not in hints:
        raise ConfigError(f"config: unknown key {key!r}; allowed keys: {Config.keys()}")
    expected = hints[key]
    try:
        if expected is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if expected is int:
            return int(raw)
        if expected is float:
            return float(raw)
        if expected is tuple:
            return tuple(float(v) for v in raw.strip("()[]").split(",") if v.strip())
        return raw
    except ValueError:
        raise ConfigError(f"config.{key}: cannot read {raw!r} as {expected.__name__}") from None
