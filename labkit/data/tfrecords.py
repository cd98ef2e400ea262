"""data.tfrecords: the standard ImageNet TFRecord schema, read and written.

Owns the feature names of ``build_imagenet_data.py`` (``image/encoded``, ``image/class/label`` 1-based with
0 = background, ``image/height``, ...), shard file names (``train-00000-of-01024``), the per-directory
``labkit-info.json`` (class count and records per file, so evaluation can pad without a counting pass), the
records per file of a TFDS-prepared directory (its ``dataset_info.json``), and listing files with clear errors.
Must not: decode or augment images (``preprocess``), or build pipelines (``pipeline``).
"""
from __future__ import annotations

import json
import os
from typing import Iterable

from labkit import storage
from labkit.data._tf import import_tf

__all__ = ["INFO_FILE", "encode_example", "write_shards", "shard_name", "list_files", "read_info",
           "count_records", "read_examples"]

INFO_FILE = "labkit-info.json"
_GLOB_CHARS = set("*?[")


def shard_name(split: str, index: int, num_shards: int) -> str:
    """``train-00003-of-00016``: the ImageNet conversion script's naming."""
    return f"{split}-{index:05d}-of-{num_shards:05d}"


def encode_example(image: bytes, label: int, *, height: int, width: int, channels: int = 3,
                   label_offset: int = 1, synset: str = "", text: str = "", filename: str = "",
                   image_format: str = "JPEG", colorspace: str = "RGB") -> bytes:
    """One serialized ``tf.train.Example`` in the ImageNet schema; stores ``label + label_offset``.

    ``label`` is 0-based; the standard files store 1..1000 (0 = background), hence ``label_offset=1``.
    """
    tf = import_tf()
    feature = tf.train.Feature

    def b(v: bytes | str):
        return feature(bytes_list=tf.train.BytesList(value=[v.encode() if isinstance(v, str) else v]))

    def i(v: int):
        return feature(int64_list=tf.train.Int64List(value=[int(v)]))

    features = {
        "image/encoded": b(image), "image/format": b(image_format), "image/colorspace": b(colorspace),
        "image/height": i(height), "image/width": i(width), "image/channels": i(channels),
        "image/class/label": i(label + label_offset), "image/class/synset": b(synset),
        "image/class/text": b(text), "image/filename": b(filename),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def write_shards(out_dir: str | os.PathLike, split: str, records: Iterable[bytes], num_shards: int,
                 *, num_classes: int | None = None) -> dict[str, int]:
    """Write serialized examples round-robin into ``num_shards`` files; returns ``{file name: records}``.

    Round-robin keeps shards within one record of each other. The counts are merged into ``labkit-info.json``.
    """
    if num_shards < 1:
        raise ValueError(f"write_shards: num_shards must be >= 1, got {num_shards}")
    tf = import_tf()
    out = os.fspath(out_dir)  # a local directory or a gs:// URL (labkit.storage)
    storage.makedirs(out)
    names = [shard_name(split, k, num_shards) for k in range(num_shards)]
    writers = [tf.io.TFRecordWriter(storage.join(out, n)) for n in names]
    counts = dict.fromkeys(names, 0)
    try:
        for k, record in enumerate(records):
            writers[k % num_shards].write(record)
            counts[names[k % num_shards]] += 1
    finally:
        for w in writers:
            w.close()
    info = read_info(out)
    info.setdefault("records", {}).update(counts)
    if num_classes is not None:
        info["num_classes"] = int(num_classes)
    storage.write_text(storage.join(out, INFO_FILE), json.dumps(info, indent=1, sort_keys=True))
    return counts


def read_info(data_dir: str | os.PathLike) -> dict:
    """The directory's ``labkit-info.json`` (``{}`` for TFRecords written by other tools)."""
    path = storage.join(data_dir, INFO_FILE)
    return json.loads(storage.read_text(path)) if storage.isfile(path) else {}


def list_files(data: str | os.PathLike, split: str) -> list[str]:
    """Sorted shard files of ``split``: ``data`` is a directory (``{split}-*``) or a glob pattern.

    Raises ``FileNotFoundError`` naming the missing directory, or the pattern that matched nothing.
    """
    data = str(data)
    if _GLOB_CHARS & set(data):
        pattern = data
    else:
        if not storage.isdir(data):
            raise FileNotFoundError(f"data directory {data!r} does not exist (expected TFRecord shards "
                                    f"named like {shard_name(split, 0, 1)} in it, or a glob pattern)")
        pattern = storage.join(data, f"{split}-*")
    # An object store lists objects only (one request for all); a local glob may also match directories.
    files = [f for f in storage.glob(pattern)
             if not f.endswith((".json", "/")) and (storage.is_url(f) or os.path.isfile(f))]
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {pattern!r} (split {split!r})")
    return files


def count_records(files: list[str]) -> list[int]:
    """Records per file: from ``labkit-info.json`` or a TFDS ``dataset_info.json`` (its splits' shard lengths)
    when the directory has one, else by reading the file once."""
    tf = import_tf()
    counts, known_by_dir = [], {}
    for f in files:
        d = storage.dirname(f)
        if d not in known_by_dir:  # one metadata read per directory, not per file
            known_by_dir[d] = {**_tfds_counts(d), **read_info(d).get("records", {})}
        known = known_by_dir[d].get(storage.basename(f))
        if known is None:  # a file from another tool: count it (reads it; corrupt tails are not counted)
            ds = tf.data.TFRecordDataset(f).ignore_errors()
            known = int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
        counts.append(int(known))
    return counts


def read_examples(files: str | list[str]) -> list[dict]:
    """Every example of some files as Python values (for tests and inspection, not for training)."""
    tf = import_tf()
    files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    out = []
    for raw in tf.data.TFRecordDataset([str(f) for f in files]):
        ex = tf.train.Example.FromString(raw.numpy()).features.feature
        row = {}
        for key, feat in ex.items():
            kind = feat.WhichOneof("kind")
            values = list(getattr(feat, kind).value)
            row[key] = values[0] if len(values) == 1 else values
        out.append(row)
    return out


def _tfds_counts(data_dir) -> dict[str, int]:
    """``{file name: records}`` from a TFDS-prepared directory's ``dataset_info.json`` (``{}`` without one).

    TFDS names shards ``{name}-{split}.tfrecord-{i:05d}-of-{n:05d}`` and lists each split's ``shardLengths``.
    """
    path = storage.join(data_dir, "dataset_info.json")
    if not storage.isfile(path):
        return {}
    info = json.loads(storage.read_text(path))
    out = {}
    for split in info.get("splits", []):
        lengths = [int(v) for v in split.get("shardLengths", [])]
        for i, n in enumerate(lengths):
            out[f"{info.get('name', '')}-{split['name']}.tfrecord-{i:05d}-of-{len(lengths):05d}"] = n
    return out
