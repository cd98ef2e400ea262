"""data.bundled: data sets of real images made on first use from files already on the machine.

Owns generating, on first use, ImageNet-schema TFRecords into a cache directory (``$LABKIT_DATA_DIR``, default
``~/.cache/labkit/data``):
  digits  the 1,797 real handwritten digits of scikit-learn, upscaled to 32x32 RGB JPEGs; fixed split
          (1,497 train / 300 validation, seed 0), 10 classes. The CPU lab's default data set.
  photos  1,024 train + 128 validation JPEGs (quality 90, 500x375 or 375x500 like typical ImageNet images)
          cut at random from the real colour photographs of scikit-image and scikit-learn. Labels = source
          photo (not meaningful): it exists to measure input throughput.
  fashion_mnist  Zalando's Fashion-MNIST (MIT licence): 60,000 train / 10,000 validation (its test set) real
          28x28 grey photos of clothing, 10 classes, 6,000 train images each, stored as 28x28 RGB JPEGs.
          Read from the four IDX files of Debian's ``dataset-fashion-mnist`` (``make fashion-mnist`` installs
          it; ``$LABKIT_FASHION_MNIST_DIR`` points elsewhere); on Colab fetched by ``keras.datasets``.
Generation writes into a temporary directory and renames it, so concurrent first uses are safe.
Must not: download anything (except Fashion-MNIST on Colab, the usual way there), or build pipelines.
"""
from __future__ import annotations

import gzip
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from labkit.data import tfrecords

__all__ = ["DATASETS", "FASHION_MNIST_CLASSES", "data_dir", "prepare", "read_idx"]

DATASETS = {
    "digits": {"num_classes": 10, "image_size": 32, "train": 1497, "validation": 300, "shards": (8, 2)},
    "photos": {"num_classes": 11, "image_size": 224, "train": 1024, "validation": 128, "shards": (16, 4)},
    "fashion_mnist": {"num_classes": 10, "image_size": 28, "train": 60000, "validation": 10000,
                      "shards": (16, 4)},
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
_FASHION_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"  # where dataset-fashion-mnist puts the IDX files
_FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                  "validation": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
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
        writers = {"digits": _write_digits, "photos": _write_photos, "fashion_mnist": _write_fashion_mnist}
        writers[name](tmp, DATASETS[name])
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


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (``.gz`` or raw) as a uint8 array: the big-endian header gives the rank and the sizes."""
    path = Path(path)
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] != 0x08:
        raise ValueError(f"IDX file {str(path)!r}: header {raw[:4].hex()!r} is not 0000 08 <rank> "
                         "(unsigned bytes); is it an MNIST-style IDX file?")
    rank = raw[3]
    shape = tuple(int(v) for v in np.frombuffer(raw, ">u4", count=rank, offset=4))
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * rank)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"IDX file {str(path)!r}: header says shape {shape} ({int(np.prod(shape))} bytes), "
                         f"the file holds {body.size}")
    return body.reshape(shape)


def _fashion_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (images [N,28,28] uint8, labels [N])} from the IDX files, or from keras.datasets on Colab."""
    folder = Path(os.environ.get("LABKIT_FASHION_MNIST_DIR") or _FASHION_DEBIAN_DIR)
    if all((folder / f).is_file() for pair in _FASHION_FILES.values() for f in pair):
        return {split: (read_idx(folder / images), read_idx(folder / labels))
                for split, (images, labels) in _FASHION_FILES.items()}
    if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG"):  # Colab: the usual fetch (Keras'
        # copy of the same four files); COLAB_RELEASE_TAG also marks a `!labkit ...` subprocess on Colab
        from tensorflow import keras
        (xt, yt), (xv, yv) = keras.datasets.fashion_mnist.load_data()
        return {"train": (xt, yt), "validation": (xv, yv)}
    missing = [f for pair in _FASHION_FILES.values() for f in pair if not (folder / f).is_file()]
    raise FileNotFoundError(
        f"fashion_mnist: the IDX files are missing from {str(folder)!r} (missing: {missing}). Install Debian's "
        "package: `sudo apt-get install dataset-fashion-mnist` (or `make fashion-mnist` in the labkit checkout), "
        "or set LABKIT_FASHION_MNIST_DIR to a folder holding the four *-ubyte.gz files of "
        "github.com/zalandoresearch/fashion-mnist; on Colab they are fetched with keras.datasets")


def _write_fashion_mnist(out: Path, spec: dict) -> None:
    arrays = _fashion_arrays()
    for split, shards in (("train", spec["shards"][0]), ("validation", spec["shards"][1])):
        images, labels = arrays[split]
        if images.shape != (spec[split], 28, 28) or labels.shape != (spec[split],):
            raise ValueError(f"fashion_mnist {split}: expected {spec[split]} images of 28x28 and as many labels, "
                             f"got images {images.shape} and labels {labels.shape}")

        def records(images=images, labels=labels, split=split):
            for k, (gray, label) in enumerate(zip(images, labels)):
                rgb = np.repeat(gray[..., None], 3, axis=-1)
                name = FASHION_MNIST_CLASSES[int(label)]
                yield tfrecords.encode_example(_jpeg(rgb, 95), int(label), height=28, width=28, synset=str(label),
                                               text=name, filename=f"fashion-{split}-{k:05d}.jpg")

        tfrecords.write_shards(out, split, records(), shards, num_classes=spec["num_classes"])
