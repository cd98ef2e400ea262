"""data.convert: ``labkit data convert SRC OUT``: a folder of class folders of images -> ImageNet TFRecords.

Owns the conversion: one sub-folder per class (sorted names = class index 0..C-1, written to ``classes.txt``),
a seeded per-class train/validation split, records shuffled into ``train-*-of-*`` / ``validation-*-of-*`` shards
with 1-based labels (the ImageNet convention). RGB JPEGs are copied byte for byte; anything else that Pillow
can read (PNG, grayscale or CMYK JPEG, ...) is re-encoded as an RGB JPEG and *reported*; unreadable files are
listed, never silently dropped.
Must not: augment, resize, or read TFRecords back.
"""
from __future__ import annotations

import collections
import io
import os
import random
import sys
from pathlib import Path

from labkit.data import tfrecords

__all__ = ["HELP", "add_arguments", "run", "convert_image_folder"]

HELP = "convert a folder with one sub-folder of images per class into ImageNet-format TFRecords"


def _load(path: Path, quality: int) -> tuple[bytes, int, int, str | None]:
    """(JPEG bytes, height, width, why it was re-encoded or None). Raises OSError if unreadable."""
    from PIL import Image
    raw = path.read_bytes()
    with Image.open(io.BytesIO(raw)) as img:
        img.load()
        width, height = img.size
        if img.format == "JPEG" and img.mode == "RGB":
            return raw, height, width, None
        why = f"{img.format or 'unknown'} {img.mode}" if img.format != "JPEG" else f"JPEG {img.mode}"
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
        return buf.getvalue(), height, width, why


def convert_image_folder(src: str | os.PathLike, out: str | os.PathLike, *, validation_fraction: float = 0.1,
                         train_shards: int = 16, validation_shards: int = 4, seed: int = 0,
                         quality: int = 95) -> dict:
    """Convert ``src/<class>/<image>`` into sharded TFRecords in ``out``; returns a report.

    Report: ``classes``, ``train``/``validation`` counts, ``converted`` ({reason: count}) and ``unreadable``
    (list of ``(path, error)``). Shard counts shrink to the number of images when there are fewer.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"convert: source directory {str(src)!r} does not exist")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction: {validation_fraction} is outside [0, 1)")
    classes = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"convert: {str(src)!r} has no class sub-folders (expected SRC/<class>/<image>)")
    rng = random.Random(seed)
    splits: dict[str, list[tuple[Path, int]]] = {"train": [], "validation": []}
    for label, name in enumerate(classes):
        files = sorted(p for p in (src / name).rglob("*") if p.is_file() and not p.name.startswith("."))
        rng.shuffle(files)
        n_val = round(len(files) * validation_fraction)
        splits["validation"] += [(f, label) for f in files[:n_val]]
        splits["train"] += [(f, label) for f in files[n_val:]]
    report = {"classes": len(classes), "converted": collections.Counter(), "unreadable": []}

    def records(items):
        for path, label in items:
            try:
                data, h, w, why = _load(path, quality)
            except (OSError, ValueError, SyntaxError) as e:  # what Pillow raises for bad files
                report["unreadable"].append((str(path), f"{type(e).__name__}: {e}"))
                continue
            if why:
                report["converted"][why] += 1
            yield tfrecords.encode_example(data, label, height=h, width=w, synset=classes[label],
                                           text=classes[label], filename=path.name)

    for split, shards in (("train", train_shards), ("validation", validation_shards)):
        items = splits[split]
        rng.shuffle(items)  # mix classes across shards, like the ImageNet script
        if not items:
            report[split] = 0
            continue
        counts = tfrecords.write_shards(out, split, records(items), max(1, min(shards, len(items))),
                                        num_classes=len(classes))
        report[split] = sum(counts.values())
    (out / "classes.txt").write_text("".join(f"{i}\t{c}\n" for i, c in enumerate(classes)))
    report["converted"] = dict(report["converted"])
    return report


def add_arguments(p) -> None:
    p.add_argument("src", help="folder with one sub-folder of images per class")
    p.add_argument("out", help="output folder for train-*/validation-* TFRecords and classes.txt")
    p.add_argument("--validation-fraction", type=float, default=0.1, help="per class (default 0.1)")
    p.add_argument("--train-shards", type=int, default=16)
    p.add_argument("--validation-shards", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quality", type=int, default=95, help="JPEG quality for re-encoded images (default 95)")


def run(args) -> int:
    try:
        r = convert_image_folder(args.src, args.out, validation_fraction=args.validation_fraction,
                                 train_shards=args.train_shards, validation_shards=args.validation_shards,
                                 seed=args.seed, quality=args.quality)
    except FileNotFoundError as e:
        print(f"labkit data convert: error: {e}", file=sys.stderr)
        return 2
    print(f"{r['classes']} classes: {r['train']} train, {r['validation']} validation images -> {args.out} "
          "(labels 1-based, as ImageNet: read with label_offset=1)")
    for why, n in sorted(r["converted"].items()):
        print(f"  re-encoded as RGB JPEG: {n} x {why}")
    for path, err in r["unreadable"]:
        print(f"  unreadable, not converted: {path} ({err})")
    return 1 if r["unreadable"] else 0
