"""data.pipeline: the paper's host input pipeline as tf.data, with one switch per optimization.

Owns ``train_dataset`` / ``eval_dataset`` (host-local ``tf.data.Dataset``s of batches ``{"image": [B,S,S,3],
"label": [B] int32}`` plus ``"mask": [B] bool`` for eval), the ``Switches`` that turn each optimization on or off,
the named ``LADDER`` of rungs that adds them one at a time, per-host file sharding, and the exact count of
skipped bad records (``SkipCounter``). Eval pads every host to the same number of batches with masked examples,
so each validation image counts exactly once across any number of hosts.
Must not: put data on devices (``prefetch``), or normalize mean/std (that runs on the device: ``normalize``).

Bad input: a record the reader cannot read (bad CRC, truncated file) ends that file (TFRecord cannot resync)
and counts 1; an example that does not parse or decode (truncated or corrupt JPEG, not a JPEG) counts 1 each.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

from labkit import storage
from labkit.data import preprocess, tfrecords
from labkit.data._tf import import_tf

__all__ = ["Switches", "LADDER", "SkipCounter", "train_dataset", "eval_dataset", "resolve_files"]


@dataclasses.dataclass(frozen=True)
class Switches:
    """One switch per optimization of the paper's pipeline (defaults: all on).

    shard_files: each host reads only its files (off: every host reads every file and keeps 1/n of records).
    cache: keep raw records in host RAM after the first epoch.
    interleave: read files in parallel, non-deterministic order (off: one file after the other).
    shuffle: shuffle file order and records (a buffer) before repeating.
    fused_crop: decode only the random-crop window (off: decode the whole JPEG, then crop).
    bicubic: bicubic resize (off: bilinear).   random_flip: random left-right flip (train only).
    parallel_map: parse+decode and batch in parallel (off: one image at a time on the consumer's thread).
    bfloat16: cast images to bfloat16 on the host (half the bytes to the device; off: float32).
    prefetch: ``prefetch(AUTOTUNE)`` at the end (off: also stops tf.data from injecting one).
    private_threadpool: a private tf.data thread pool of ``threads`` threads.
    """
    shard_files: bool = True
    cache: bool = True
    interleave: bool = True
    shuffle: bool = True
    fused_crop: bool = True
    bicubic: bool = True
    random_flip: bool = True
    parallel_map: bool = True
    bfloat16: bool = True
    prefetch: bool = True
    private_threadpool: bool = True

    def added(self, previous: "Switches") -> list[str]:
        """Names of the switches on here and off in ``previous``."""
        return [f.name for f in dataclasses.fields(self)
                if getattr(self, f.name) and not getattr(previous, f.name)]


def _ladder() -> tuple[tuple[str, Switches], ...]:
    rungs = [("naive", Switches(cache=False, interleave=False, fused_crop=False, parallel_map=False,
                                bfloat16=False, prefetch=False, private_threadpool=False))]
    for name in ("interleave", "parallel_map", "fused_crop", "cache", "bfloat16", "prefetch",
                 "private_threadpool"):
        rungs.append((f"+ {name}", dataclasses.replace(rungs[-1][1], **{name: True})))
    assert rungs[-1][1] == Switches()
    return tuple(rungs)


# The ablation ladder: naive (sequential read, full decode then crop, no parallelism, no prefetch), then each
# optimization added in turn; the last rung is the default pipeline. shard_files/shuffle/bicubic/random_flip
# stay on throughout: they are correctness or quality choices, not speed-ups on one host.
LADDER = _ladder()


class SkipCounter:
    """The exact number of bad records a pipeline skipped (cumulative; read it any time with ``.value``)."""

    def __init__(self):
        tf = import_tf()
        self._var = tf.Variable(0, dtype=tf.int64, trainable=False, name="labkit_skipped")

    @property
    def value(self) -> int:
        return int(self._var.numpy())

    def _count(self, bad):  # (tf graph) add 1 if bad; returns the op
        return self._var.assign_add(import_tf().cast(bad, self._var.dtype))

    def _count_once(self, bad, key, seen):
        """(tf graph) add 1 if bad and ``key`` (a position in a fixed-order stream) was never seen: a second
        pass over the same eval dataset does not count its bad records again. ``seen``: an int32 variable."""
        tf = import_tf()
        was = tf.gather(seen, key)
        with tf.control_dependencies([was]):
            mark = seen.scatter_nd_max(tf.reshape(key, [1, 1]), tf.reshape(tf.cast(bad, seen.dtype), [1]))
        with tf.control_dependencies([mark]):
            return self._count(tf.logical_and(bad, tf.equal(was, 0)))

    def __repr__(self) -> str:
        return f"SkipCounter({self.value})"


def resolve_files(data, split: str) -> tuple[list[str], dict]:
    """Files of ``split`` and their schema: ``data`` is a directory, a glob, a bundled name, or ``tfds:NAME``.

    ``tfds:imagenet2012`` reads a TFDS-prepared copy (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``): one
    prepared version only (the newest, or ``tfds:imagenet2012:5.1.0``), keys ``image``/``label``, labels
    already 0-based; record counts come from its ``dataset_info.json`` (``tfrecords.count_records``).
    Returns ``(files, {"keys", "label_offset", "num_classes"})`` where ``label_offset``/``num_classes`` are
    None when the caller decides.
    """
    from labkit.data import bundled
    schema = {"keys": ("image/encoded", "image/class/label"), "label_offset": None, "num_classes": None}
    data = str(data)
    if data.startswith("tfds:"):
        name, _, version = data[5:].partition(":")
        root = os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))
        version_dir = _tfds_version_dir(storage.join(root, name), version)
        files = tfrecords.list_files(storage.join(version_dir, f"{name}-{split}.tfrecord-*"), split)
        return files, {"keys": ("image", "label"), "label_offset": 0,
                       "num_classes": 1000 if name.startswith("imagenet2012") else None}
    if data in bundled.DATASETS and not os.path.exists(data):
        data = str(bundled.prepare(data))
    files = tfrecords.list_files(data, split)
    info = tfrecords.read_info(storage.dirname(files[0]))  # the data set's own metadata, where it has some
    schema["num_classes"], schema["label_offset"] = info.get("num_classes"), info.get("label_offset")
    return files, schema


def _tfds_version_dir(base: str, version: str = "") -> str:
    """The one prepared version directory to read under ``base`` (``NAME/``): ``version``, else the newest."""
    found = {}
    for path in storage.glob(storage.join(base, "*")):
        v = storage.basename(path.rstrip("/"))
        if re.fullmatch(r"\d+\.\d+\.\d+", v) and storage.isdir(path):
            found[v] = path.rstrip("/")
    if not found:
        raise FileNotFoundError(f"tfds: no prepared version directory (like 5.1.0) under {base!r}")
    if version:
        if version not in found:
            raise ValueError(f"tfds: version {version!r} is not prepared under {base!r}; allowed values: "
                             f"{sorted(found)}")
        return found[version]
    return found[max(found, key=lambda v: tuple(map(int, v.split("."))))]


def _host(process_index, process_count) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index: {process_index} is outside [0, {process_count})")
    return process_index, process_count


def _read_file(path, size, count):
    """(tf) One TFRecord file's records. A read error ends the file: detected as bytes read != file size and
    counted by ``count(bad)``."""
    tf = import_tf()
    records = tf.data.TFRecordDataset(path, buffer_size=8 << 20).ignore_errors()
    # Each record occupies its payload + 16 framing bytes; a marker at the end carries the file size.
    tagged = records.map(lambda r: (r, tf.cast(tf.strings.length(r), tf.int64) + 16, False))
    end = tf.data.Dataset.from_tensors((tf.constant(b""), size, True))

    def step(consumed, element):
        record, n, is_end = element
        complete = tf.logical_or(tf.logical_not(is_end), tf.equal(consumed, n))
        return consumed + tf.where(is_end, tf.constant(0, tf.int64), n), (record, is_end, complete)

    def keep(record, is_end, complete):
        with tf.control_dependencies([count(tf.logical_not(complete))]):
            return tf.logical_not(is_end)

    return tagged.concatenate(end).scan(tf.constant(0, tf.int64), step).filter(keep).map(lambda r, e, c: r)


def _records(files, switches: Switches, counter, host, num_hosts, *, train: bool, cycle_length: int,
             seed: int | None = None, deterministic: bool = False, count_file=None):
    """Records of ``files``. Without ``shard_files`` every host reads every file and keeps records h, h+n, ... of
    each one: split inside a file, whose order is fixed, so hosts never overlap whatever the file order or
    interleaving. ``count_file(bad, file_index)`` counts a cut-short file (default: ``counter._count``)."""
    tf = import_tf()
    sizes = [storage.size(f) for f in files]  # local or gs:// (labkit.storage)
    ds = tf.data.Dataset.from_tensor_slices((files, tf.constant(sizes, tf.int64), tf.range(len(files),
                                                                                          dtype=tf.int64)))
    if train and switches.shuffle:
        ds = ds.shuffle(len(files), seed=seed)
    count_file = count_file or (lambda bad, _i: counter._count(bad))
    split = not switches.shard_files and num_hosts > 1

    def read(f, n, i):
        records = _read_file(f, n, lambda bad: count_file(bad, i))
        return records.shard(num_hosts, host) if split else records  # every host reads every file: slow

    if switches.interleave:
        ds = ds.interleave(read, cycle_length=max(1, min(cycle_length, len(files))), block_length=1,
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic or not train)
    else:
        ds = ds.flat_map(read)
    return ds.cache() if switches.cache else ds


def _decode_all(ds, decode, size, switches: Switches, counter, keys, label_offset, num_classes, *, train,
                deterministic: bool = False, count=None, keep_index: bool = False):
    """Parse+decode each ``(record, index)``; any error turns it into a marked bad element, counted and dropped.

    ``decode(image_bytes, index)``: the index (position in the stream) seeds stateless augmentation.
    ``count(bad, index)`` counts a bad element (default: ``counter._count``).
    """
    tf = import_tf()
    dtype = tf.bfloat16 if switches.bfloat16 else tf.float32

    count = count or (lambda bad, _index: counter._count(bad))

    def good(record, index):
        image_bytes, label = _parse(record, keys, label_offset)
        image = decode(image_bytes, index)
        return tf.cast(image, dtype), label, True, index

    def safely(record, index):  # a one-element dataset: the decoded record, or the bad marker if it failed
        one = tf.data.Dataset.from_tensors((record, index)).map(good).ignore_errors()
        bad = (tf.zeros([size, size, 3], dtype), tf.constant(-1, tf.int32), False, index)
        return one.concatenate(tf.data.Dataset.from_tensors(bad)).take(1)

    if switches.parallel_map:
        ds = ds.interleave(safely, cycle_length=2 * (os.cpu_count() or 2), block_length=1,
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic or not train)
    else:
        ds = ds.interleave(safely, cycle_length=1, block_length=1)

    def keep(image, label, ok, index):
        in_range = tf.logical_and(label >= 0, label < num_classes)
        check = tf.debugging.Assert(
            tf.logical_or(tf.logical_not(ok), in_range),
            [f"label outside [0, {num_classes}) after label_offset={label_offset}: label =", label])
        with tf.control_dependencies([count(tf.logical_not(ok), index), check]):
            return tf.identity(ok)

    if keep_index:  # the record's position in the stream rides along (a random-access stream's position)
        return ds.filter(keep)
    return ds.filter(keep).map(lambda image, label, ok, _index: (image, label, ok))


def _parse(record, keys, label_offset):
    tf = import_tf()
    image_key, label_key = keys
    f = tf.io.parse_single_example(record, {image_key: tf.io.FixedLenFeature([], tf.string),
                                            label_key: tf.io.FixedLenFeature([], tf.int64)})
    return f[image_key], tf.cast(f[label_key] - label_offset, tf.int32)


def _finish(ds, batch_size, switches: Switches, threads, *, train: bool, deterministic: bool = False):
    tf = import_tf()
    deterministic = deterministic or not train
    if switches.parallel_map:
        ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE,
                      deterministic=deterministic)
    else:
        ds = ds.batch(batch_size, drop_remainder=True)
    keys = ("image", "label", "mask")
    ds = ds.map(lambda *t: dict(zip(keys, t)) if not train else
                dict(zip(keys[:2], t[:2]), **({"record": t[3]} if len(t) == 4 else {})))
    if switches.prefetch:
        ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    options.threading.max_intra_op_parallelism = 1  # the paper's setting: parallelism comes from tf.data
    if switches.private_threadpool:
        options.threading.private_threadpool_size = threads or os.cpu_count() or 2
    opt = options.experimental_optimization
    if not switches.parallel_map:  # naive means sequential: stop tf.data from parallelizing behind our back
        opt.map_parallelization = opt.parallel_batch = opt.filter_parallelization = False
    if not switches.prefetch:
        opt.inject_prefetch = False
        opt.seq_interleave_prefetch = False
    return ds.with_options(options)


def _setup(data, split, label_offset, num_classes, process_index, process_count, skip_counter):
    files, schema = resolve_files(data, split)
    if label_offset is None:
        label_offset = 1 if schema["label_offset"] is None else schema["label_offset"]
    num_classes = num_classes if num_classes is not None else schema["num_classes"]
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: {num_classes!r} is unknown or not a positive int for {data!r}; "
                         "pass num_classes=")
    host, n = _host(process_index, process_count)
    return files, schema["keys"], label_offset, num_classes, host, n, skip_counter or SkipCounter()


def train_dataset(data, batch_size: int, *, image_size: int = 224, split: str = "train",
                  switches: Switches = Switches(), num_classes: int | None = None, label_offset: int | None = None,
                  num_epochs: int | None = None, process_index: int | None = None, process_count: int | None = None,
                  cycle_length: int = 64, shuffle_buffer: int = 16384, threads: int | None = None,
                  skip_counter: SkipCounter | None = None, seed: int | None = None, deterministic: bool = False,
                  crop_area: tuple[float, float] = preprocess.AREA_RANGE, random_access: bool = False,
                  start_record: int = 0):
    """Host-local training batches ``{"image": [B,S,S,3] bf16|f32 0..255, "label": [B] int32}``.

    ``data``: a directory of ImageNet-schema shards, a glob, ``"digits"``/``"photos"``, or ``"tfds:NAME"``.
    ``batch_size`` is this host's batch. ``label_offset`` (default 1, the ImageNet files' 1-based labels) is
    subtracted from stored labels, which must then lie in ``[0, num_classes)`` (else an error naming the value).
    ``num_epochs=None`` repeats forever. Hosts default to ``jax.process_index()/process_count()``. Bad records
    are skipped and counted in ``skip_counter`` (also at ``dataset.skip_counter``).
    ``seed`` seeds the shuffles, and crops and flips become stateless functions of (seed, position in the
    stream); with ``deterministic`` every parallel stage keeps its order too, so the batches depend on the
    seed alone (what an exactly resumable run needs; slightly slower). Default: the paper's free order.
    ``crop_area``: the random crop's share of the image area (the paper's (0.08, 1.0) by default; small
    images such as 32x32 digits train better with a milder crop).
    ``random_access`` (needs ``seed``; implies ``deterministic``): this host's raw records are read into RAM once
    (what ``cache`` keeps) and the stream is a pure function of its position: stream element ``i`` is record
    ``index_shuffle(i mod N)`` of a permutation seeded by (seed, host, epoch ``i // N``): a full shuffle of each
    epoch instead of a ``shuffle_buffer``-record window. Each batch then carries ``"record"`` ([B] int64, the
    stream positions of its images), and ``start_record`` starts the stream there: a resume needs one number, not
    the buffers a tf.data iterator checkpoint would hold (TensorFlow 2.21 keeps the shuffle buffer even with
    ``experimental_symbolic_checkpoint``, and refuses it for ``cache`` and ``ignore_errors``).
    """
    tf = import_tf()
    files, keys, label_offset, num_classes, host, n, counter = _setup(
        data, split, label_offset, num_classes, process_index, process_count, skip_counter)
    if switches.shard_files and n > 1:
        if len(files) < n:
            raise ValueError(f"train: {len(files)} files cannot be split over {n} hosts; write at least {n} "
                             "shards or use Switches(shard_files=False)")
        files = files[host::n]
    if random_access:
        if seed is None:
            raise ValueError("train: random_access=True needs a seed (the order is a function of seed and position)")
        deterministic = True
        ds = _random_access_records(files, switches, counter, host, n, cycle_length=cycle_length, seed=seed,
                                    num_epochs=num_epochs, start=start_record)
    else:
        ds = _records(files, switches, counter, host, n, train=True, cycle_length=cycle_length, seed=seed,
                      deterministic=deterministic)
        if switches.shuffle:
            ds = ds.shuffle(shuffle_buffer, seed=None if seed is None else seed + 1)
        ds = ds.repeat(num_epochs).enumerate().map(lambda i, r: (r, i))  # position: seeds stateless augmentation

    def decode(image_bytes, index):
        # (seed, host, position): image i gets its own crop and flip on every host.
        seeds = None if seed is None else tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(tf.constant([seed, host], tf.int64), index), 2)
        image = preprocess.decode_and_random_crop(image_bytes, image_size, fused=switches.fused_crop,
                                                  bicubic=switches.bicubic, seed=None if seeds is None else seeds[0],
                                                  area_range=crop_area)
        if not switches.random_flip:
            return image
        if seeds is None:
            return tf.image.random_flip_left_right(image)
        return tf.image.stateless_random_flip_left_right(image, seed=seeds[1])

    ds = _decode_all(ds, decode, image_size, switches, counter, keys, label_offset, num_classes, train=True,
                     deterministic=deterministic, keep_index=random_access)
    ds = _finish(ds, batch_size, switches, threads, train=True, deterministic=deterministic)
    ds.skip_counter, ds.random_access = counter, random_access
    return ds


def _random_access_records(files, switches: Switches, counter, host, num_hosts, *, cycle_length, seed, num_epochs,
                           start):
    """``(record, position)`` from stream position ``start`` on, each a function of (seed, host, position) alone.

    The records are read once, in file order (a cut-short file is counted here, once), and held in RAM, as
    ``Switches.cache`` holds them in the streamed order: more than half of this machine's memory is refused before
    anything is read."""
    tf = import_tf()
    need = sum(storage.size(f) for f in files) / (1 if switches.shard_files else num_hosts)
    ram = _physical_memory()
    if ram and need > ram / 2:
        raise ValueError(f"train: random_access=True (config deterministic=True with cache=True) holds this host's "
                         f"records in RAM: "
                         f"{need / 2**30:.1f} GiB of the {ram / 2**30:.1f} GiB here (more than half). Allowed: "
                         "cache=False (streamed; the saved input position is then the shuffle buffer's state), "
                         "more hosts, or a machine with more memory")
    once = dataclasses.replace(switches, cache=False, shuffle=False)
    records = list(_records(files, once, counter, host, num_hosts, train=True, cycle_length=cycle_length,
                            deterministic=True).as_numpy_iterator())
    if not records:
        raise ValueError(f"train: the {len(files)} file(s) of this host hold no readable records")
    table, n = tf.constant(records, tf.string), len(records)
    stop = tf.int64.max if num_epochs is None else num_epochs * n

    def at(i):
        j = i % n
        if switches.shuffle:  # a permutation of the epoch, seeded by (seed, host, epoch): no buffer to keep
            key = tf.random.experimental.stateless_fold_in(tf.constant([seed + 1, host], tf.int64), i // n)
            j = tf.random.experimental.index_shuffle(j, key, n - 1)
        return tf.gather(table, j), i

    return tf.data.Dataset.range(int(start), stop).map(at)


_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")  # cgroup v2, v1


def _physical_memory() -> int | None:
    """The memory this process may use: the machine's, or a container's cgroup limit where that is lower
    (Docker, Kubernetes and notebook hosts set one; the kernel kills a process that passes it)."""
    try:
        found = [os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
    except (ValueError, OSError, AttributeError):  # not POSIX
        found = []
    for limit in _CGROUP_LIMITS:
        try:
            with open(limit) as f:
                raw = f.read().strip()
        except OSError:
            continue
        if raw.isdigit():  # "max" (v2) means no limit
            found.append(int(raw))
    return min(found) if found else None


def eval_dataset(data, batch_size: int, *, image_size: int = 224, split: str = "validation",
                 switches: Switches = Switches(), num_classes: int | None = None, label_offset: int | None = None,
                 process_index: int | None = None, process_count: int | None = None, cycle_length: int = 64,
                 threads: int | None = None, skip_counter: SkipCounter | None = None):
    """Host-local eval batches ``{"image", "label", "mask": [B] bool}``: center crop, deterministic order.

    Host ``h`` of ``n`` reads files ``h, h+n, ...`` (``shard_files=False``: every file, records ``h, h+n, ...``
    of each). Every host yields the same number of batches (enough for the busiest host); the rest is padding
    with ``mask=False``, so summing over ``mask`` counts each image once. Bad records are counted once per
    dataset: iterating it again does not count them again.
    Set on the result: ``dataset.num_batches``, and ``dataset.num_records``: the records this host reads (its
    real images are fewer by the bad ones, which become padding; the eval step's ``mask`` sum counts them).
    """
    tf = import_tf()
    files, keys, label_offset, num_classes, host, n, counter = _setup(
        data, split, label_offset, num_classes, process_index, process_count, skip_counter)
    counts = tfrecords.count_records(files)
    if switches.shard_files or n == 1:
        per_host = [sum(counts[h::n]) for h in range(n)]
        mine = files[host::n]
    else:  # every host reads every file and keeps records h, h+n, ... of each
        per_host = [sum(len(range(h, c, n)) for c in counts) for h in range(n)]
        mine = files
    if max(per_host) == 0:
        raise ValueError(f"eval: the {len(files)} {split!r} files of {data!r} hold no records")
    num_batches = math.ceil(max(per_host) / batch_size)
    switches = dataclasses.replace(switches, shuffle=False, random_flip=False)
    # Positions in this host's (fixed-order) stream, then one per file: each bad one is counted once.
    seen = tf.Variable(tf.zeros([per_host[host] + len(mine) + 1], tf.int32), trainable=False)
    if mine:
        ds = _records(mine, switches, counter, host, n, train=False, cycle_length=cycle_length,
                      count_file=lambda bad, i: counter._count_once(bad, per_host[host] + i, seen))
    else:  # more hosts than files: this host only pads
        ds = tf.data.Dataset.from_tensor_slices(tf.constant([], tf.string))

    def decode(image_bytes, _index):
        return preprocess.decode_and_center_crop(image_bytes, image_size, fused=switches.fused_crop,
                                                 bicubic=switches.bicubic)

    ds = ds.enumerate().map(lambda i, r: (r, i))
    ds = _decode_all(ds, decode, image_size, switches, counter, keys, label_offset, num_classes, train=False,
                     count=lambda bad, i: counter._count_once(bad, tf.minimum(i, per_host[host]), seen))
    dtype = tf.bfloat16 if switches.bfloat16 else tf.float32
    pad = tf.data.Dataset.from_tensors((tf.zeros([image_size, image_size, 3], dtype),
                                        tf.constant(0, tf.int32), False)).repeat()
    ds = ds.concatenate(pad).take(num_batches * batch_size)  # skipped records become padding too
    ds = _finish(ds, batch_size, switches, threads, train=False)
    ds.skip_counter, ds.num_batches, ds.num_records = counter, num_batches, per_host[host]
    ds._labkit_seen = seen  # keeps the variable alive as long as the dataset
    return ds
