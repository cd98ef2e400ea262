"""bench.input: ``labkit bench input``: the input-pipeline ablation ladder against the machine's ceiling.

Owns the measurement: every rung of ``pipeline.LADDER`` (naive, then one optimization added at a time) timed in
one run on the same data, in images/s, plus the *ceiling*: the fused decode-crop-resize-flip-cast alone over
JPEG bytes already in memory, one thread per core, no pipeline around it. The ceiling is taken before and after
the ladder (the machine is shared; both are shown, their mean is the reference). Each rung is reported as img/s,
x naive and x ceiling. These are real host-CPU timings of this machine, not accelerator-host numbers.
Must not: change the pipeline (it only builds rungs through ``train_dataset``).
"""
from __future__ import annotations

import json
import os
import sys

from labkit.bench import timer
from labkit.data import pipeline, preprocess
from labkit.data._tf import import_tf

__all__ = ["HELP", "add_arguments", "run", "measure_ladder", "measure_ceiling"]

HELP = "input-pipeline ablation ladder (naive -> all optimizations) vs the decode ceiling, in images/s"


def _time_batches(iterator, seconds: float, max_images: int, warmup: int) -> tuple[float, int]:
    return timer.rate(iterator, seconds, count=lambda batch: int(batch["image"].shape[0]), max_items=max_images,
                      warmup=warmup)


def measure_ceiling(jpegs: list[bytes], image_size: int, seconds: float, *, threads: int | None = None,
                    bfloat16: bool = True) -> float:
    """Images/s of fused decode + random crop + bicubic resize + flip (+ bf16 cast) over in-memory JPEG bytes.

    Nothing else runs: no file reading, parsing, shuffling, batching or Python per image. The decode function
    is mapped over the bytes with ``threads`` parallel calls (default: one per core) and the results are
    counted inside TensorFlow (``reduce``), so the cores do nothing but the image work.
    """
    tf = import_tf()
    threads = threads or os.cpu_count() or 2
    dtype = tf.bfloat16 if bfloat16 else tf.float32

    def one(image_bytes):
        image = preprocess.decode_and_random_crop(image_bytes, image_size, fused=True, bicubic=True)
        return tf.cast(tf.image.random_flip_left_right(image), dtype)

    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    images = tf.data.Dataset.from_tensor_slices(tf.constant(jpegs)).repeat()
    images = images.map(one, num_parallel_calls=threads, deterministic=False).with_options(options)

    def timed(n: int) -> float:
        return timer.timed(lambda: images.take(n).reduce(tf.constant(0, tf.int64), lambda c, _: c + 1))[1]

    probe = max(threads * 8, 16)
    rate = probe / timed(probe)  # calibrate, then time about `seconds`
    n = max(probe, int(rate * seconds))
    return n / timed(n)


def measure_ladder(data, *, batch_size: int = 64, image_size: int = 224, seconds: float = 10.0,
                   max_images: int = 0, warmup: int = 3, rungs=None, threads: int | None = None,
                   log=print) -> dict:
    """Time each rung (default: all of ``pipeline.LADDER``) and the ceiling; returns the results."""
    tf = import_tf()
    files, _ = pipeline.resolve_files(data, "train")
    jpegs = [tf.io.parse_single_example(r, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
             ["image/encoded"].numpy() for r in tf.data.TFRecordDataset(files).take(256)]
    ladder = [(n, s) for n, s in pipeline.LADDER if rungs is None or n in rungs]
    results = {"rungs": [], "ceiling": []}
    log(f"{'ceiling (before)':28s} ...", end="", flush=True)
    results["ceiling"].append(measure_ceiling(jpegs, image_size, seconds, threads=threads))
    log(f" {results['ceiling'][0]:8.1f} img/s")
    for name, switches in ladder:
        log(f"{name:28s} ...", end="", flush=True)
        ds = pipeline.train_dataset(data, batch_size, image_size=image_size, switches=switches,
                                    threads=threads, process_index=0, process_count=1)
        rate, n = _time_batches(iter(ds), seconds, max_images, warmup)
        results["rungs"].append({"name": name, "img_s": rate, "images": n,
                                 "switches": {k: v for k, v in vars(switches).items()}})
        log(f" {rate:8.1f} img/s  ({n} images)")
        del ds
    log(f"{'ceiling (after)':28s} ...", end="", flush=True)
    results["ceiling"].append(measure_ceiling(jpegs, image_size, seconds, threads=threads))
    log(f" {results['ceiling'][1]:8.1f} img/s")
    return results


def _table(results: dict, args) -> str:
    ceiling = sum(results["ceiling"]) / len(results["ceiling"])
    naive = results["rungs"][0]["img_s"] if results["rungs"] else float("nan")
    lines = ["| rung | img/s | x naive | x ceiling |", "|---|---:|---:|---:|"]
    for r in results["rungs"]:
        lines.append(f"| {r['name']} | {r['img_s']:.0f} | {r['img_s'] / naive:.2f} | "
                     f"{r['img_s'] / ceiling:.2f} |")
    lo, hi = min(results["ceiling"]), max(results["ceiling"])
    lines.append(f"| ceiling: fused decode-crop-resize, in memory, {args.threads or os.cpu_count()} threads "
                 f"(before {results['ceiling'][0]:.0f}, after {results['ceiling'][1]:.0f}) | {ceiling:.0f} | "
                 f"{ceiling / naive:.2f} | 1.00 |")
    if results["rungs"]:
        full = results["rungs"][-1]["img_s"]
        lines.append("")
        lines.append(f"full pipeline: {full / ceiling:.2f}x ceiling (target >= 0.90), {full / naive:.2f}x naive "
                     f"(target >= 3); ceiling spread {lo:.0f}-{hi:.0f} img/s")
    return "\n".join(lines)


def add_arguments(p) -> None:
    p.add_argument("--data", default="photos", help="bundled name or TFRecord directory (default photos)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--image-size", type=int, default=224, help="output image side in pixels (default 224)")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per rung (default 10)")
    p.add_argument("--images", type=int, default=0, help="stop a rung after this many images (0: by time)")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches per rung (default 3)")
    p.add_argument("--rungs", default=None, help="comma-separated rung names (default: the whole ladder)")
    p.add_argument("--threads", type=int, default=None, help="tf.data private pool and ceiling threads "
                   "(default: one per core)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")


def run(args) -> int:
    tf = import_tf()
    rungs = None if not args.rungs else [r.strip() for r in args.rungs.split(",")]
    names = [n for n, _ in pipeline.LADDER]
    if rungs and set(rungs) - set(names):
        raise ValueError(f"--rungs: {sorted(set(rungs) - set(names))} unknown; allowed: {names}")
    load0 = os.getloadavg()
    print(f"labkit bench input: {args.data}, batch {args.batch_size}, {args.image_size}px, "
          f"{args.seconds:g} s per rung; tf {tf.__version__}, {os.cpu_count()} cores, "
          f"load average {load0[0]:.2f} at start")
    print("host CPU timings of this machine (the input pipeline runs for real; not an accelerator host)\n")
    try:
        results = measure_ladder(args.data, batch_size=args.batch_size, image_size=args.image_size,
                                 seconds=args.seconds, max_images=args.images, warmup=args.warmup, rungs=rungs,
                                 threads=args.threads)
    except FileNotFoundError as e:
        print(f"labkit bench input: error: {e}", file=sys.stderr)
        return 2
    load1 = os.getloadavg()
    print()
    print(_table(results, args))
    print(f"load average {load0[0]:.2f} at start, {load1[0]:.2f} at end ({os.cpu_count()} cores)")
    if args.json:
        results.update(load_start=load0[0], load_end=load1[0], cores=os.cpu_count(), data=args.data,
                       batch_size=args.batch_size, image_size=args.image_size)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0
