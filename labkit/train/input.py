"""train.input: the training loop's input, built from the config: tf.data pipelines fed to the devices.

Owns the mapping from ``Config`` (dataset, data_dir, batch, image size, seed) to ``labkit.data`` calls: the
train iterator (prefetched to the devices, resumable at a step) and the masked evaluation batches.
Must not: implement pipeline stages (``labkit.data`` does) or touch the model.
"""
from __future__ import annotations

import dataclasses
import os

import jax

from labkit.config import Config, ConfigError
from labkit.mesh import Topology

__all__ = ["DataInfo", "describe_data", "create_train_iterator", "create_eval_dataset", "eval_batches"]


@dataclasses.dataclass(frozen=True)
class DataInfo:
    num_classes: int
    train_images: int
    image_size: int
    source: str          # what labkit.data reads: a bundled name, a directory, or tfds:NAME


def _source(config: Config) -> str:
    if config.dataset in ("digits", "fashion_mnist", "photos"):
        return config.dataset
    if config.dataset == "tfds":
        return "tfds:" + (config.data_dir or "imagenet2012")
    if config.dataset == "tfrecords":
        return os.path.expanduser(config.data_dir)
    return "synthetic"


def describe_data(config: Config) -> DataInfo:
    """Classes and train-set size (the epoch length), from the config or the data set itself."""
    source = _source(config)
    if source == "synthetic":
        return DataInfo(config.num_classes or 1000, config.train_images or 1_281_167, config.image_size, source)
    from labkit.data import tfrecords
    from labkit.data.pipeline import resolve_files
    files, schema = resolve_files(source, "train")
    num_classes = config.num_classes or schema.get("num_classes")
    if not num_classes:
        raise ConfigError(f"config.num_classes: the data set {source!r} does not say how many classes it has; "
                          "set num_classes")
    train_images = config.train_images or sum(tfrecords.count_records(files))
    return DataInfo(int(num_classes), int(train_images), config.image_size, source)


def _label_offset(config: Config):
    # -1 (the default) and bundled/TFDS data: the data set's own metadata decides (else 1, the ImageNet files)
    return config.label_offset if config.dataset == "tfrecords" and config.label_offset >= 0 else None


def _switches(config: Config):
    """The host pipeline's switches: every optimization on, or the rung ``config.input_rung`` of the ladder."""
    from labkit.data import LADDER, Switches
    if not config.input_rung:
        return Switches(random_flip=config.random_flip)
    rungs = {name.lstrip("+ "): switches for name, switches in LADDER}
    return dataclasses.replace(rungs[config.input_rung], random_flip=config.random_flip)


def create_train_iterator(config: Config, topo: Topology, info: DataInfo, *, start_step: int = 0, stream=None):
    """Global training batches from ``start_step`` on, prefetched to the devices (``input_queue`` telemetry).

    With ``config.deterministic`` the order and augmentation depend only on (seed, step), so a resumed run
    sees exactly the batches an uninterrupted one would.
    """
    from labkit.data import DevicePrefetcher, synthetic_batches
    if info.source == "synthetic":
        return synthetic_batches(topo, config.global_batch, image_size=config.image_size,
                                 num_classes=info.num_classes, seed=config.seed)
    from labkit.data import Switches, train_dataset
    per_host = config.global_batch // jax.process_count()
    # Deterministic: the stream depends on the seed alone, so skipping the consumed batches reproduces an
    # unbroken run exactly (it re-reads them). Otherwise (the pod presets): a fresh shuffle, seeded by the step.
    seed = config.seed if config.deterministic else config.seed + start_step
    ds = train_dataset(info.source, per_host, image_size=config.image_size, num_classes=info.num_classes,
                       label_offset=_label_offset(config), seed=seed, deterministic=config.deterministic,
                       crop_area=(config.crop_area_min, 1.0),
                       switches=_switches(config))
    counter = ds.skip_counter
    if start_step and config.deterministic:
        ds = ds.skip(start_step)
    return DevicePrefetcher(ds, topo, size=max(1, config.prefetch), stream=stream,
                            emit_every=max(1, config.log_every_steps), skip_counter=counter, start_step=start_step)


def create_eval_dataset(config: Config, info: DataInfo):
    """This host's masked evaluation dataset (None for synthetic data), built once and iterated per evaluation."""
    if info.source == "synthetic":
        return None
    from labkit.data import eval_dataset
    per_host = config.global_batch // jax.process_count()
    return eval_dataset(info.source, per_host, image_size=config.image_size, num_classes=info.num_classes,
                        label_offset=_label_offset(config))


def eval_batches(ds, topo: Topology):
    """One pass over ``ds`` as global batches with ``mask`` (every validation image once, padding masked)."""
    if ds is None:
        return
    for batch in ds.as_numpy_iterator():
        yield {k: topo.shard_batch(v) for k, v in batch.items()}
