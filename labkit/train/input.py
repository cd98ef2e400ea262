"""train.input: the training loop's input, built from the config: tf.data pipelines fed to the devices.

Owns the mapping from ``Config`` (dataset, data_dir, batch, image size, seed) to ``labkit.data`` calls: the
train iterator (prefetched to the devices, resumable at a step) and the masked evaluation batches.
Must not: implement pipeline stages (``labkit.data`` does) or touch the model.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading

import jax

from labkit import storage
from labkit.config import Config, ConfigError
from labkit.data._tf import import_tf
from labkit.mesh import Topology

__all__ = ["DataInfo", "describe_data", "create_train_iterator", "InputPositions", "create_eval_dataset", "eval_batches"]


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
        return Switches(random_flip=config.random_flip, cache=config.cache_records)
    rungs = {name.lstrip("+ "): switches for name, switches in LADDER}
    rung = rungs[config.input_rung]
    return dataclasses.replace(rung, random_flip=config.random_flip, cache=rung.cache and config.cache_records)


def create_train_iterator(config: Config, topo: Topology, info: DataInfo, *, start_step: int = 0, stream=None,
                          positions: "InputPositions | None" = None):
    """Global training batches from ``start_step`` on, prefetched to the devices (``input_queue`` telemetry).

    The device queue holds ``max(prefetch, steps_per_loop)`` batches: a K-step host call takes K at once.

    With ``positions`` (a run directory's saved input positions), the tf.data iterator is restored from the
    latest saved position at or before ``start_step`` and only the few batches between are read again, so a
    resume costs the same at step 10 and at step 100,000; new positions are saved where ``positions`` asks.
    With ``config.deterministic`` the order and augmentation depend only on (seed, step), so a resumed run
    sees exactly the batches an uninterrupted one would.
    """
    from labkit.data import DevicePrefetcher, synthetic_batches
    if info.source == "synthetic":
        return synthetic_batches(topo, config.global_batch, image_size=config.image_size,
                                 num_classes=info.num_classes, seed=config.seed)
    from labkit.data import train_dataset
    per_host = config.global_batch // jax.process_count()
    switches = _switches(config)
    # Deterministic input over records held in RAM: the stream is a function of (seed, position), and a saved
    # position is one number (no tf.data buffers). Without the cache: a tf.data iterator checkpoint.
    random_access = config.deterministic and switches.cache
    saved = positions.at_or_before(start_step) if positions is not None else None
    # With a saved position, or deterministic input, the stream depends on the seed alone. Otherwise (a
    # non-deterministic pipeline, such as the pod presets', whose order cannot be replayed exactly anyway): a
    # fresh shuffle, seeded by the step.
    seed = config.seed if (config.deterministic or saved is not None) else config.seed + start_step
    start_record = positions.record(saved) if random_access and saved is not None else 0
    ds = train_dataset(info.source, per_host, image_size=config.image_size, num_classes=info.num_classes,
                       label_offset=_label_offset(config), seed=seed, deterministic=config.deterministic,
                       crop_area=(config.crop_area_min, 1.0), switches=switches, random_access=random_access,
                       start_record=start_record)
    counter = ds.skip_counter
    if positions is not None:
        if saved is None and not config.deterministic:  # a fresh shuffle: nothing to replay
            source = positions.source(ds, start_step)
        else:  # restore the saved position (none: from the start), then read the few batches up to start_step
            source = positions.source(ds, saved or 0, restore=saved is not None, start_record=start_record)
            for _ in range(start_step - source.position):  # at most one save interval (all of them: no save)
                next(source)
    else:
        if getattr(ds, "random_access", False):  # the record positions are for saving; nothing saves them here
            ds = ds.map(lambda batch: {k: v for k, v in batch.items() if k != "record"})
        source = ds.skip(start_step) if start_step and config.deterministic else ds
    # K steps per host call take K batches at once, right after a host point (when the device is idle): a queue
    # shallower than K would make every window wait for K - depth batches, so the depth is at least K.
    depth = max(1, config.prefetch, config.steps_per_loop)
    return DevicePrefetcher(source, topo, size=depth, stream=stream,
                            emit_every=max(1, config.log_every_steps), skip_counter=counter, start_step=start_step)


class InputPositions:
    """Saved input positions of one run: ``DIR/<step>/host<i>.json`` (a random-access stream: the next record's
    position, one number) or ``DIR/<step>/host<i>.*`` (a tf.data iterator checkpoint, for input without the record
    cache: it holds the shuffle buffer). gs:// works.

    ``wanted(step)`` says where to save (the loop's checkpoint steps). The prefetch thread saves the position
    *before* it reads the batch of a wanted step, so a checkpoint at that step resumes with no batch read twice.
    """

    def __init__(self, directory: str, wanted=lambda step: False, keep: int = 4):
        self.directory, self.wanted, self.keep = str(directory).rstrip("/"), wanted, keep
        self._cond = threading.Condition()
        self._saved: set[int] = set(self._list())

    def _list(self) -> list[int]:
        tf = import_tf()
        if not tf.io.gfile.isdir(self.directory):
            return []
        return sorted(int(n.rstrip("/")) for n in tf.io.gfile.listdir(self.directory) if n.rstrip("/").isdigit())

    def _prefix(self, step: int) -> str:
        return f"{self.directory}/{step}/host{jax.process_index()}"

    def at_or_before(self, step: int) -> int | None:
        tf = import_tf()
        found = [s for s in self._saved if s <= step and (tf.io.gfile.exists(self._prefix(s) + ".json")
                                                          or tf.io.gfile.exists(self._prefix(s) + ".index"))]
        return max(found) if found else None

    def record(self, step: int) -> int:
        """The stream position (next record) saved at ``step`` by a random-access source."""
        path = self._prefix(step) + ".json"
        try:
            return int(json.loads(storage.read_text(path))["record"])
        except FileNotFoundError:
            raise FileNotFoundError(f"input position: {path!r} does not exist; the position saved at step {step} "
                                    "is a tf.data iterator checkpoint (a run without the record cache), or "
                                    "missing") from None

    def source(self, ds, position: int, restore: bool = False, start_record: int = 0) -> "_PositionedSource":
        return _PositionedSource(self, ds, position, restore=restore, start_record=start_record)

    def wait_for(self, step: int, timeout: float = 600.0) -> int | None:
        """The saved position a checkpoint at ``step`` resumes from (waits for ``step``'s own if it is wanted)."""
        with self._cond:
            if self.wanted(step):
                self._cond.wait_for(lambda: step in self._saved, timeout)
            found = [s for s in self._saved if s <= step]
        return max(found) if found else None

    def _record(self, step: int) -> None:
        with self._cond:
            self._saved.add(step)
            self._cond.notify_all()
            old = sorted(self._saved)[:-self.keep]
        tf = import_tf()
        for s in old:  # each host removes its own files
            for path in tf.io.gfile.glob(self._prefix(s) + ".*"):
                tf.io.gfile.remove(path)
            with self._cond:
                self._saved.discard(s)


class _PositionedSource:
    """The input handed to the prefetch thread: counts batches and saves positions when wanted.

    A random-access dataset (``train_dataset(random_access=True)``) saves the next record's position; any other
    saves its tf.data iterator (``tf.train.Checkpoint``)."""

    def __init__(self, positions: InputPositions, ds, position: int, restore: bool, start_record: int = 0):
        self.positions, self.position = positions, position
        self._random_access = bool(getattr(ds, "random_access", False))
        self._next_record = start_record
        if self._random_access:  # started at its position already: nothing to restore
            self._iterator = ds.as_numpy_iterator()
            return
        tf = import_tf()
        options = tf.data.Options()  # the skip counter is a variable: its value is not part of a position
        options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
        self._iterator = ds.with_options(options).as_numpy_iterator()
        self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)
        if restore:
            self._checkpoint.read(positions._prefix(position)).assert_consumed()

    def __iter__(self):
        return self

    def __next__(self):
        if self.positions.wanted(self.position) and self.position not in self.positions._saved:
            if self._random_access:
                storage.makedirs(storage.dirname(self.positions._prefix(self.position)))
                storage.write_text(self.positions._prefix(self.position) + ".json",
                                   json.dumps({"record": self._next_record, "step": self.position}))
            else:
                self._checkpoint.write(self.positions._prefix(self.position))
            self.positions._record(self.position)
        batch = next(self._iterator)
        if self._random_access:
            self._next_record = int(batch.pop("record")[-1]) + 1  # in stream order: the last is the largest
        self.position += 1
        return batch


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
