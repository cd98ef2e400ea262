"""bench.input: ``labkit bench input``: the input-pipeline ablation ladder against the machine's ceiling.

Owns the measurement that ``labkit bench input`` and notebook 02 share: every rung of ``pipeline.LADDER``
(naive, then one optimization added at a time) and the *ceiling* (the fused decode-crop-resize-flip-cast alone
over JPEG bytes already in memory, one thread per core, no pipeline around it), timed in interleaved rounds:
ceiling, rung 1, rung 2, ..., then again, each block a fresh iterator, warmed up untimed, then timed for about
``seconds``. A rung's figure is its best round (other programs only ever add time, so the least-disturbed round
is the closest to what the pipeline can do). Each rung is compared with the one before it (and with the
ceiling) by its upper half of rounds (median to best): where the two ranges overlap the step is within noise,
and the result says so. The cores other programs kept busy are measured per round (``/proc/stat``).
Also the JSON file with the run's provenance (machine, load, command, date, labkit commit).
These are real host-CPU timings of this machine, not accelerator-host numbers.
Must not: change the pipeline (it only builds rungs through ``train_dataset``).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable

from labkit import storage
from labkit.bench import timer
from labkit.data import pipeline, preprocess
from labkit.data._tf import import_tf

__all__ = ["HELP", "add_arguments", "run", "measure_ladder", "best_of_rounds", "upper_half", "compare", "summarize",
           "provenance"]

HELP = "input-pipeline ablation ladder (naive -> all optimizations) vs the decode ceiling, in images/s"
CEILING = "ceiling"


MIN_ROUNDS = 3  # fewer rounds give no spread: compare() then claims no difference


def best_of_rounds(rates: list[float]) -> float:
    """A mode's figure: its fastest round (load on a shared machine only slows a round down, never speeds it)."""
    if not rates:
        raise ValueError("best_of_rounds: no rounds measured; allowed: a list of at least one rate")
    return max(rates)


def upper_half(rates: list[float]) -> tuple[float, float]:
    """(median round, best round) of a mode: the rounds that other programs disturbed least. Load only slows a
    round down, so this range is where the mode's undisturbed speed lies; its width is the noise left over."""
    if not rates:
        raise ValueError("upper_half: no rounds measured; allowed: a list of at least one rate")
    ordered = sorted(rates)
    n = len(ordered)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return median, ordered[-1]


def compare(a: list[float], b: list[float]) -> str:
    """'faster', 'slower' or 'within noise': ``a``'s upper half of rounds lies wholly above ``b``'s, wholly below
    it, or the two overlap. One disturbed round moves neither the median nor the best. With fewer than
    ``MIN_ROUNDS`` rounds of either there is no spread to judge by: 'within noise' (nothing is claimed)."""
    if min(len(a), len(b)) < MIN_ROUNDS:
        return "within noise"
    (a_lo, a_hi), (b_lo, b_hi) = upper_half(a), upper_half(b)
    return "faster" if a_lo > b_hi else "slower" if a_hi < b_lo else "within noise"


def summarize(results: dict) -> dict:
    """What the rounds show: per rung its best img/s, x naive and x ceiling (ratios of bests), and whether it is
    faster than the rung before it and than the ceiling, or within noise (``compare``: upper halves of rounds).

    Returns ``{"rows": [...], "full_x_naive", "full_x_ceiling", "within_noise": [rung names whose step from the
    rung before is within noise], "slower": [rungs clearly slower than the rung before], "above_ceiling": [rungs
    whose best beats the ceiling's best], "ceiling_clear_of": [rungs the ceiling is faster than], "text": a few
    plain lines}``.
    """
    rungs, ceiling = results["rungs"], results["ceiling"]
    naive, top = rungs[0]["img_s"], ceiling["img_s"]
    rows, within, above, clear = [], [], [], []
    for k, r in enumerate(rungs):
        row = {"name": r["name"], "img_s": r["img_s"], "x_naive": r["img_s"] / naive, "x_ceiling": r["img_s"] / top,
               "upper_half": upper_half(r["rounds"])}
        if k:
            row["vs_previous"] = compare(r["rounds"], rungs[k - 1]["rounds"])
            if row["vs_previous"] == "within noise":
                within.append(r["name"])
        row["vs_ceiling"] = compare(r["rounds"], ceiling["rounds"])
        if r["img_s"] > top:
            above.append(r["name"])
        if row["vs_ceiling"] == "slower":
            clear.append(r["name"])
        rows.append(row)
    full = rows[-1]
    lines = [f"full pipeline ({full['name']}): {full['x_naive']:.2f}x naive, {full['x_ceiling']:.2f}x the ceiling "
             f"(best of {len(ceiling['rounds'])} rounds)",
             "steps within noise of the rung before (their upper halves of rounds overlap): "
             + (", ".join(within) if within else "none")]
    slower = [r["name"] for r in rows if r.get("vs_previous") == "slower"]
    if slower:
        lines.append("steps slower than the rung before (upper halves apart): " + ", ".join(slower))
    if above:
        beyond = [r["name"] for r in rows if r["name"] in above and r["vs_ceiling"] == "faster"]
        near = [n for n in above if n not in beyond]
        if near:
            lines.append("rungs above the ceiling's best but within noise of it: " + ", ".join(near))
        if beyond:
            lines.append("rungs faster than the ceiling (it is not a bound in this run): " + ", ".join(beyond))
    else:
        lines.append("the ceiling is at or above every rung"
                     + ("" if len(clear) == len(rows) else "; within noise of it: "
                        + ", ".join(r["name"] for r in rows if r["name"] not in clear)))
    return {"rows": rows, "full_x_naive": full["x_naive"], "full_x_ceiling": full["x_ceiling"],
            "within_noise": within, "slower": slower, "above_ceiling": above, "ceiling_clear_of": clear,
            "text": "\n".join(lines)}


def _ceiling_dataset(jpegs: list[bytes], image_size: int, batch_size: int, threads: int):
    """Fused decode + random crop + bicubic resize + flip + bf16 cast over in-memory JPEG bytes, ``threads``
    parallel calls, in batches: no file reading, parsing, shuffling or Python per image."""
    tf = import_tf()

    def one(image_bytes):
        image = preprocess.decode_and_random_crop(image_bytes, image_size, fused=True, bicubic=True)
        return tf.cast(tf.image.random_flip_left_right(image), tf.bfloat16)

    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    images = tf.data.Dataset.from_tensor_slices(tf.constant(jpegs)).repeat()
    images = images.map(one, num_parallel_calls=threads, deterministic=False)
    return images.batch(batch_size, drop_remainder=True).map(lambda x: {"image": x}).with_options(options)


def _cpu_busy_s() -> float | None:
    """CPU seconds every program on the machine has used so far (Linux ``/proc/stat``; None elsewhere)."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq = map(int, f.readline().split()[1:8])
        return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


def _block(dataset, seconds: float, max_images: int, warmup: int) -> Callable[[], tuple[float, int]]:
    """One timed block: a fresh iterator (its threads end with it), ``warmup`` untimed batches, then the timer."""
    def block():
        iterator = iter(dataset)
        try:
            return timer.rate(iterator, seconds, count=lambda b: int(b["image"].shape[0]), max_items=max_images,
                              warmup=warmup)
        finally:
            del iterator
    return block


def measure_ladder(data, *, batch_size: int = 64, image_size: int = 224, seconds: float = 3.0, rounds: int = 3,
                   max_images: int = 0, warmup: int = 3, rungs=None, threads: int | None = None,
                   extra: dict | None = None, ceiling: bool = True, log=print) -> dict:
    """Time the ceiling, each rung (default: all of ``pipeline.LADDER``) and each ``extra`` dataset (name ->
    a ``tf.data.Dataset`` of ``{"image": ...}`` batches or ``(image, label)`` batches) in ``rounds`` interleaved
    rounds of ``seconds`` per block.

    Returns ``{"rungs": [{"name", "img_s" (best round), "rounds": [img/s per round], "images": [...],
    "switches"}], "ceiling": {"name", "img_s", "rounds", "images"} (or None), "extra": [like rungs], "rounds",
    "seconds", "batch_size", "image_size", "data", "cores", "threads", "statistic", "load": [1-minute load
    average before each round and at the end: it counts this benchmark's own threads], "others_cores": [cores
    that other programs kept busy during each round, from /proc/stat less this process's CPU time; empty where
    /proc/stat is missing]}``.
    """
    if rounds < 1 or seconds <= 0:
        raise ValueError(f"rounds must be >= 1 and seconds > 0; got rounds={rounds}, seconds={seconds}")
    tf = import_tf()
    names = [n for n, _ in pipeline.LADDER]
    if rungs is not None and set(rungs) - set(names):
        raise ValueError(f"rungs: {sorted(set(rungs) - set(names))} unknown; allowed: {names}")
    if rungs is not None and names[0] not in rungs:  # every ratio is "x naive": naive is always measured
        rungs = [names[0], *rungs]
    threads = threads or os.cpu_count() or 2
    modes: dict[str, tuple[str, object, dict | None]] = {}  # name -> (kind, dataset, switches)
    if ceiling:
        files, _ = pipeline.resolve_files(data, "train")
        jpegs = [tf.io.parse_single_example(r, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
                 ["image/encoded"].numpy() for r in tf.data.TFRecordDataset(files).take(256)]
        modes[CEILING] = ("ceiling", _ceiling_dataset(jpegs, image_size, batch_size, threads), None)
    for name, switches in pipeline.LADDER:
        if rungs is None or name in rungs:
            ds = pipeline.train_dataset(data, batch_size, image_size=image_size, switches=switches, threads=threads,
                                        process_index=0, process_count=1)
            modes[name] = ("rung", ds, dict(vars(switches)))
    for name, ds in (extra or {}).items():
        if name in modes:
            raise ValueError(f"extra: {name!r} is already a mode's name; allowed: any other name")
        modes[name] = ("extra", ds.map(lambda *t: {"image": t[0]["image"] if isinstance(t[0], dict) else t[0]}), None)
    blocks = {name: _block(ds, seconds, max_images, warmup) for name, (_, ds, _) in modes.items()}
    rates: dict[str, list[float]] = {n: [] for n in modes}
    counts: dict[str, list[int]] = {n: [] for n in modes}
    load, others = [], []  # the load average counts this benchmark's own threads too; ``others`` does not
    for r in range(rounds):
        load.append(os.getloadavg()[0])
        log(f"round {r + 1}/{rounds} (load average {load[-1]:.2f}):", end="", flush=True)
        busy0, own0, t0 = _cpu_busy_s(), time.process_time(), time.monotonic()
        for name, block in blocks.items():
            rate, n = block()
            rates[name].append(rate)
            counts[name].append(n)
            log(f" {name} {rate:.0f}", end=",", flush=True)
        busy1, own1, t1 = _cpu_busy_s(), time.process_time(), time.monotonic()
        if busy0 is not None and busy1 is not None:
            others.append(max(0.0, (busy1 - busy0) - (own1 - own0)) / (t1 - t0))
            log(f" other programs used {others[-1]:.2f} cores", end="")
        log("")
    load.append(os.getloadavg()[0])

    def entry(name):
        kind, _, switches = modes[name]
        e = {"name": name, "img_s": best_of_rounds(rates[name]), "rounds": rates[name], "images": counts[name]}
        return dict(e, switches=switches) if kind == "rung" else e

    return {"rungs": [entry(n) for n in modes if modes[n][0] == "rung"],
            "ceiling": entry(CEILING) if ceiling else None,
            "extra": [entry(n) for n in modes if modes[n][0] == "extra"],
            "rounds": rounds, "seconds": seconds, "batch_size": batch_size, "image_size": image_size,
            "data": str(data), "cores": os.cpu_count(), "threads": threads, "load": load, "others_cores": others,
            "statistic": "best of interleaved rounds"}


def provenance(argv: list[str] | None = None) -> dict:
    """``timer.provenance`` of this run (the measuring code: ``labkit/bench`` and ``labkit/data``) and the
    TensorFlow version; these are host-CPU timings."""
    command = " ".join(["labkit", "bench", "input"] + list(sys.argv[3:] if argv is None else argv))
    return {**timer.provenance(command, ("labkit/bench", "labkit/data"),
                               "host CPU (the pipeline runs for real; not an accelerator host)"),
            "tensorflow": import_tf().__version__}


def _table(results: dict) -> str:
    s = summarize(results)
    ceiling = results["ceiling"]
    lines = ["| rung | img/s (best round) | rounds | x naive | x ceiling | vs rung before (upper halves) |",
             "|---|---:|---|---:|---:|---|"]
    for row, r in zip(s["rows"], results["rungs"]):
        lines.append(f"| {r['name']} | {r['img_s']:.0f} | {', '.join(f'{x:.0f}' for x in r['rounds'])} | "
                     f"{row['x_naive']:.2f} | {row['x_ceiling']:.2f} | {row.get('vs_previous', '')} |")
    lines.append(f"| ceiling: fused decode-crop-resize, in memory, {results['threads']} threads | "
                 f"{ceiling['img_s']:.0f} | {', '.join(f'{x:.0f}' for x in ceiling['rounds'])} | "
                 f"{ceiling['img_s'] / results['rungs'][0]['img_s']:.2f} | 1.00 | |")
    return "\n".join(lines) + "\n\n" + s["text"]


def add_arguments(p) -> None:
    p.add_argument("--data", default="photos", help="bundled name or TFRecord directory (default photos)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--image-size", type=int, default=224, help="output image side in pixels (default 224)")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per rung and round (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds: every rung once per round, the best "
                   "round counts (default 3)")
    p.add_argument("--images", type=int, default=0, help="stop a block after this many images (0: by time)")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches per block (default 3)")
    p.add_argument("--rungs", default=None, help="comma-separated rung names (default: the whole ladder)")
    p.add_argument("--threads", type=int, default=None, help="tf.data private pool and ceiling threads "
                   "(default: one per core)")
    p.add_argument("--json", default=None, help="also write the results and their provenance (machine, load, "
                   "command, date, labkit commit) to this JSON file")


def run(args) -> int:
    tf = import_tf()
    rungs = None if not args.rungs else [r.strip() for r in args.rungs.split(",")]
    names = [n for n, _ in pipeline.LADDER]
    if rungs and set(rungs) - set(names):
        raise ValueError(f"--rungs: {sorted(set(rungs) - set(names))} unknown; allowed: {names}")
    if rungs and rungs[0] != "naive":
        rungs = ["naive"] + rungs  # every ratio is against naive
    load0 = os.getloadavg()
    print(f"labkit bench input: {args.data}, batch {args.batch_size}, {args.image_size}px, {args.rounds} "
          f"interleaved rounds of {args.seconds:g} s per rung (best round counts); tf {tf.__version__}, "
          f"{os.cpu_count()} cores, load average {load0[0]:.2f} at start")
    print("host CPU timings of this machine (the input pipeline runs for real; not an accelerator host)\n")
    try:
        results = measure_ladder(args.data, batch_size=args.batch_size, image_size=args.image_size,
                                 seconds=args.seconds, rounds=args.rounds, max_images=args.images,
                                 warmup=args.warmup, rungs=rungs, threads=args.threads)
    except FileNotFoundError as e:
        print(f"labkit bench input: error: {e}", file=sys.stderr)
        return 2
    load1 = os.getloadavg()
    print()
    print(_table(results))
    print(f"load average {load0[0]:.2f} at start, {load1[0]:.2f} at end ({os.cpu_count()} cores; it counts this "
          "benchmark's own threads)")
    if results["others_cores"]:
        print(f"other programs used {min(results['others_cores']):.2f}-{max(results['others_cores']):.2f} cores "
              "during the rounds")
    if args.json:
        results["summary"] = {k: v for k, v in summarize(results).items() if k != "rows"}
        results["provenance"] = provenance()
        with storage.open_file(args.json, "w") as f:  # a local path or gs://
            json.dump(results, f, indent=1)
    return 0
