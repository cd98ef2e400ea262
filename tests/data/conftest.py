"""Tiny generated ImageNet-schema TFRecords for the data tests (made once per session)."""
import io
import os

import numpy as np
import pytest

NUM_CLASSES = 64
# Uneven files on purpose: with 2 hosts, host 0 gets files 0 and 2 (7 + 3 images), host 1 gets file 1 (5).
VALIDATION_FILES = (7, 5, 3)
TRAIN_FILES = (9, 8, 8, 7, 8)  # 40 images, labels 0..39, each unique


def jpeg(rgb: np.ndarray, quality: int = 90, mode: str | None = None, fmt: str = "JPEG") -> bytes:
    from PIL import Image
    img = Image.fromarray(rgb)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=quality)
    return buf.getvalue()


def image_for(label: int, h: int = 24, w: int = 32) -> np.ndarray:
    """A deterministic small photo-like image whose content depends on the label."""
    rng = np.random.default_rng(label)
    base = rng.integers(0, 256, size=(1, 1, 3))
    ramp = np.linspace(0, 60, w)[None, :, None] + np.linspace(0, 40, h)[:, None, None]
    return np.clip(base + ramp + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def write_split(out, split, sizes, first_label=0, *, label_offset=1):
    from labkit.data import tfrecords
    label = first_label
    counts = {}
    for k, n in enumerate(sizes):
        recs = []
        for _ in range(n):
            recs.append(tfrecords.encode_example(jpeg(image_for(label)), label, height=24, width=32,
                                                 label_offset=label_offset, filename=f"img{label}.jpg"))
            label += 1
        import tensorflow as tf
        name = tfrecords.shard_name(split, k, len(sizes))
        with tf.io.TFRecordWriter(str(out / name)) as w:
            for r in recs:
                w.write(r)
        counts[name] = n
    return counts


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A directory with train (40 images, 5 files) and validation (15 images, 3 files) shards, 64 classes."""
    import json
    from labkit.data import tfrecords
    out = tmp_path_factory.mktemp("tiny")
    info = {"num_classes": NUM_CLASSES, "records": {}}
    info["records"].update(write_split(out, "train", TRAIN_FILES))
    info["records"].update(write_split(out, "validation", VALIDATION_FILES))
    (out / tfrecords.INFO_FILE).write_text(json.dumps(info))
    return out


@pytest.fixture(scope="session")
def corrupt(tmp_path_factory):
    """10 good examples, 3 bad examples (truncated JPEG, garbage, PNG) and 1 truncated file tail.

    Returns (dir, good labels, expected skipped count).
    """
    import tensorflow as tf
    from labkit.data import tfrecords
    out = tmp_path_factory.mktemp("corrupt")
    good = [tfrecords.encode_example(jpeg(image_for(i)), i, height=24, width=32) for i in range(10)]
    full = jpeg(image_for(50))
    bad = [tfrecords.encode_example(full[: len(full) // 2], 50, height=24, width=32),       # truncated JPEG
           tfrecords.encode_example(full[:3] + os.urandom(300), 51, height=24, width=32),  # corrupt JPEG
           tfrecords.encode_example(jpeg(image_for(52), fmt="PNG"), 52, height=24, width=32)]  # not a JPEG
    with tf.io.TFRecordWriter(str(out / "validation-00000-of-00002")) as w:
        for r in good[:5] + bad[:2] + good[5:8]:
            w.write(r)
    path = out / "validation-00001-of-00002"
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in [bad[2]] + good[8:] + good[:1]:   # the last record will be cut short
            w.write(r)
    raw = path.read_bytes()
    path.write_bytes(raw[:-20])  # a truncated file: its last record is lost
    for name in ("validation-00000-of-00002", "validation-00001-of-00002"):
        os.link(out / name, out / name.replace("validation", "train"))
    return out, list(range(10)), 4
