"""data.convert: ``labkit data convert SRC OUT``: a folder of class folders of images -> ImageNet TFRecords.

Owns the conversion: one sub-folder per class (sorted names = class index 0..C-1, written to ``classes.txt``),
a seeded per-class train/validation split, records shuffled into ``train-*-of-*`` / ``validation-*-of-*`` shards
with 1-based labels (the ImageNet convention, recorded as ``label_offset: 1`` in ``labkit-info.json`` so that
readers detect it). RGB JPEGs are copied byte for byte; anything else that Pillow can read (PNG, grayscale or
CMYK JPEG, ...) is re-encoded as an RGB JPEG and *reported*; empty and unreadable files are listed (and dropped
before the shard counts are chosen), empty class folders are reported and are not classes.
Must not: augment, resize, or read TFRecords back.
"""
from __future__ import annotations

import collections
import io
import json
import os
import random
import sys
from pathlib import Path

from labkit.data import tfrecords

__all__ = ["HELP", "add_arguments", "run", "convert_image_folder"]

HELP = "convert a folder with one sub-folder of images per class into ImageNet-format TFRecords"


def _load(path: Path, quality: int) -> tuple[bytes, int, int, str | None]:
    """(JPEG bytes, height, width, why it was re-encoded or None). Raises OSError if unreadable."""
    from PIL import Image, UnidentifiedImageError
    raw = path.read_bytes()
    if not raw:
        raise OSError("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(raw))
    except UnidentifiedImageError:  # its message carries a BytesIO repr: say it in words
        raise OSError(f"not an image Pillow can read ({len(raw):,} bytes)") from None
    with img:
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

    Report: ``classes``, ``train``/``validation`` counts, ``converted`` ({reason: count}), ``unreadable``
    (list of ``(path, why)``: empty or not an image) and ``empty_classes`` (folders without files, not classes).
    Shard counts shrink to the number of readable images when there are fewer: no shard is empty.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"convert: source directory {str(src)!r} does not exist")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction: {validation_fraction} is outside [0, 1)")
    folders = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    files_of = {name: _files(src / name) for name in folders}
    classes = [name for name in folders if files_of[name]]
    if not classes:
        raise FileNotFoundError(f"convert: {str(src)!r} has no class sub-folders with files "
                                f"(expected SRC/<class>/<image>; found folders: {folders})")
    report = {"classes": len(classes), "converted": collections.Counter(), "unreadable": [],
              "empty_classes": [name for name in folders if not files_of[name]]}
    rng = random.Random(seed)
    splits: dict[str, list[tuple[Path, int]]] = {"train": [], "validation": []}
    for label, name in enumerate(classes):
        files = []
        for path in files_of[name]:  # drop bad files first: shard counts are chosen from what remains
            try:
                _load(path, quality)
                files.append(path)
            except (OSError, ValueError, SyntaxError) as e:  # what Pillow raises for bad files
                report["unreadable"].append((str(path), str(e) if isinstance(e, OSError) and not e.errno
                                             else f"{type(e).__name__}: {e}"))
        rng.shuffle(files)
        n_val = round(len(files) * validation_fraction)
        splits["validation"] += [(f, label) for f in files[:n_val]]
        splits["train"] += [(f, label) for f in files[n_val:]]

    def records(items):
        for path, label in items:
            data, h, w, why = _load(path, quality)
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
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("".join(f"{i}\t{c}\n" for i, c in enumerate(classes)))
    info_path = out / tfrecords.INFO_FILE  # readers take the offset from here (config label_offset=-1: detect)
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info.update(label_offset=1, num_classes=len(classes))
    info_path.write_text(json.dumps(info, indent=1, sort_keys=True))
    report["converted"] = dict(report["converted"])
    return report


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def add_arguments(p) -> None:
    p.add_argument("src", help="folder with one sub-folder of images per class")
    p.add_argument("out", help="output folder for train-*/validation-* TFRecords and classes.txt")
    p.add_argument("--validation-fraction", type=float, default=0.1, help="per class (default 0.1)")
    p.add_argument("--train-shards", type=int, default=16,
                   help="train shard files (default 16; fewer when there are fewer images)")
    p.add_argument("--validation-shards", type=int, default=4,
                   help="validation shard files (default 4; fewer when there are fewer images)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/validation split and shuffles (default 0)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality for re-encoded images (default 95)")


def run(args) -> int:
    try:
        r = convert_image_folder(args.src, args.out, validation_fraction=args.validation_fraction,
                                 train_shards=args.train_shards, validation_shards=args.validation_shards,
                                 seed=args.seed, quality=args.quality)
    except (FileNotFoundError, ValueError) as e:
        print(f"labkit data convert: error: {e}", file=sys.stderr)
        return 2
    print(f"{r['classes']} classes: {r['train']} train, {r['validation']} validation images -> {args.out} "
          "(labels 1-based, as ImageNet; labkit-info.json says so, and labkit reads them right by default)")
    for why, n in sorted(r["converted"].items()):
        print(f"  re-encoded as RGB JPEG: {n} x {why}")
    for name in r["empty_classes"]:
        print(f"  empty class folder, not a class: {Path(args.src) / name}")
    for path, err in r["unreadable"]:
        print(f"  not converted: {path} ({err})")
    if r["unreadable"]:
        print(f"labkit data convert: exit status 1: {len(r['unreadable'])} file(s) could not be converted "
              "(listed above); the rest were written", file=sys.stderr)
        return 1
    return 0
