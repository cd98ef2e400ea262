"""data.bundled: offline data sets made from real images shipped inside scikit-learn and scikit-image.

Owns generating, on first use, ImageNet-schema TFRecords into a cache directory (``$LABKIT_DATA_DIR``, default
``~/.cache/labkit/data``):
  digits  the 1,797 real handwritten digits of scikit-learn, upscaled to 32x32 RGB JPEGs; fixed split
          (1,497 train / 300 validation, seed 0), 10 classes. The CPU lab's default data set.
  photos  1,024 train + 128 validation JPEGs (quality 90, 500x375 or 375x500 like typical ImageNet images)
          cut at random from the real colour photographs of scikit-image and scikit-learn. Labels = source
          photo (not meaningful): it exists to measure input throughput.
Generation writes into a temporary directory and renames it, so concurrent first uses are safe.
Must not: download anything, or build pipelines.
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from labkit.data import tfrecords

__all__ = ["DATASETS", "data_dir", "prepare"]

DATASETS = {
    "digits": {"num_classes": 10, "image_size": 32, "train": 1497, "validation": 300, "shards": (8, 2)},
    "photos": {"num_classes": 11, "image_size": 224, "train": 1024, "validation": 128, "shards": (16, 4)},
}
_DONE = "DONE"
# Colour photographs shipped inside the packages (no network): scikit-image files, scikit-learn samples.
_SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
                   "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg")
_SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


def data_dir() -> Path:
    """Root of the generated data sets: ``$LABKIT_DATA_DIR`` or ``~/.cache/labkit/data``."""
    return Path(os.environ.get("LABKIT_DATA_DIR") or Path.home() / ".cache" / "labkit" / "data")


def prepare(name: str, root: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Generate the bundled data set ``name`` (if not there yet); returns its directory of TFRecords."""
    if name not in DATASETS:
        raise ValueError(f"bundled data set: {name!r} is unknown; allowed: {sorted(DATASETS)} "
                         "('synthetic' batches are made on the device: labkit.data.synthetic_batches)")
    root = Path(root) if root is not None else data_dir()
    target = root / name
    if (target / _DONE).is_file() and not force:
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        (_write_digits if name == "digits" else _write_photos)(tmp, DATASETS[name])
        (tmp / _DONE).write_text("ok\n")
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: use its copy
            if not (target / _DONE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _write_digits(out: Path, spec: dict) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))
    size = spec["image_size"]
    split_at = spec["train"]

    def records(indices):
        for k in indices:
            gray = (digits.images[k] * (255.0 / 16.0)).round().astype(np.uint8)
            gray = np.asarray(Image.fromarray(gray).resize((size, size), Image.BICUBIC))
            rgb = np.repeat(gray[..., None], 3, axis=-1)
            label = int(digits.target[k])
            yield tfrecords.encode_example(_jpeg(rgb, 95), label, height=size, width=size, synset=str(label),
                                           text=f"digit {label}", filename=f"digit-{k:04d}.jpg")

    for split, idx, shards in (("train", order[:split_at], spec["shards"][0]),
                               ("validation", order[split_at:], spec["shards"][1])):
        tfrecords.write_shards(out, split, records(idx), shards, num_classes=spec["num_classes"])


def _photo_sources() -> list[tuple[str, np.ndarray]]:
    import skimage
    import sklearn.datasets
    from PIL import Image
    sk = Path(skimage.__file__).parent / "data"
    sl = Path(sklearn.datasets.__file__).parent / "images"
    paths = [sk / f for f in _SKIMAGE_PHOTOS] + [sl / f for f in _SKLEARN_PHOTOS]
    sources = []
    for p in paths:
        if p.is_file():
            sources.append((p.stem, np.asarray(Image.open(p).convert("RGB"))))
    if len(sources) < 4:
        raise RuntimeError(f"photos: found only {len(sources)} bundled photographs in {sk} and {sl}")
    return sources


def _write_photos(out: Path, spec: dict) -> None:
    from PIL import Image
    sources = _photo_sources()
    rng = np.random.default_rng(0)

    def records(n, offset):
        for k in range(n):
            label = (k + offset) % len(sources)
            name, src = sources[label]
            h, w = src.shape[:2]
            landscape = rng.random() < 0.75  # ImageNet is mostly landscape 500x375
            tw, th = (500, 375) if landscape else (375, 500)
            scale = rng.uniform(0.35, 1.0) * min(h / th, w / tw)  # a random window of the right aspect
            ch, cw = max(8, int(th * scale)), max(8, int(tw * scale))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = src[y:y + ch, x:x + cw]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            rgb = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((tw, th), Image.BICUBIC))
            yield tfrecords.encode_example(_jpeg(rgb, 90), label, height=th, width=tw, synset=name, text=name,
                                           filename=f"{name}-{k + offset:05d}.jpg")

    tfrecords.write_shards(out, "train", records(spec["train"], 0), spec["shards"][0],
                           num_classes=spec["num_classes"])
    tfrecords.write_shards(out, "validation", records(spec["validation"], spec["train"]), spec["shards"][1],
                           num_classes=spec["num_classes"])
