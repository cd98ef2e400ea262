"""lab.inputs: notebook 02's measurements of the input pipeline: the feed demo, the ladder (``labkit bench input``'s
measuring code) beside its committed reference run, the rung switches, and the check of a learner's tf.data chain.

Must not: render (``labkit.figures`` does) or build pipelines of its own (``labkit.data`` owns them).
"""
from __future__ import annotations

import time

__all__ = ["feed_demo", "input_ladder", "input_reference", "input_switches", "check_input_chain"]


def feed_demo(compute_s: float, *, steps: int = 30, stream=None, batch_size: int = 64, data: str = "photos",
              image_size: int = 224) -> dict:
    """Feed ``data`` to the devices while a pretend model takes ``compute_s`` a step; returns the queue summary.

    A fast model (small ``compute_s``) finds the queue empty: input-bound. A slow one finds it full: compute-
    bound. ``input_queue`` events go to ``stream`` for the host-queue dashboard.
    """
    from labkit.data import DevicePrefetcher, train_dataset
    from labkit.mesh import Topology
    topo = Topology.build(devices="compute")  # the input pipeline feeds the real device(s) of the plan
    ds = train_dataset(data, batch_size, image_size=image_size)
    with DevicePrefetcher(ds, topo, size=4, stream=stream) as batches:
        t0 = time.perf_counter()
        for _ in range(steps):
            next(batches)
            time.sleep(compute_s)
        elapsed = time.perf_counter() - t0
        summary = batches.summary()
    return {"compute_s": compute_s, "images_per_s": summary["images"] / elapsed,
            "input_bound_fraction": summary["input_bound_steps"] / max(1, summary["steps"]),
            "input_wait_s": summary["input_wait_s"]}


def input_ladder(data: str = "photos", *, rounds: int = 3, seconds: float = 1.5, batch_size: int = 64,
                 rungs=None, extra: dict | None = None, ceiling: bool = True, log=None) -> dict:
    """The input ladder measured as ``labkit bench input`` does (``labkit.bench.input.measure_ladder``): the
    ceiling and every rung (and each ``extra`` name -> dataset) in ``rounds`` interleaved rounds of ``seconds``
    each, a rung's figure its best round. Adds ``summary`` (``bench.input.summarize``: x naive, x ceiling, and
    which steps are within noise, from the paired rounds) when the ceiling was measured."""
    from labkit.bench import input as bench
    results = bench.measure_ladder(data, batch_size=batch_size, seconds=seconds, rounds=rounds, rungs=rungs,
                                   extra=extra, ceiling=ceiling, log=log or (lambda *a, **k: None))
    if ceiling:
        results["summary"] = bench.summarize(results)
    return results


def input_reference(path: str | None = None, *, missing_ok: bool = False) -> dict | None:
    """The committed reference run of the input ladder (``labkit bench input --json``; default
    ``labkit/results/02_input_ladder.json``), with its ``summary`` recomputed from its rounds.

    Raises ``FileNotFoundError`` (naming the path) where the file is missing (e.g. labkit installed without the
    package data; ``missing_ok``: returns None instead) and ``ValueError`` naming the missing keys where it is not
    such a run."""
    from labkit.bench import input as bench
    from labkit.lab import _reference
    results = _reference.read("02_input_ladder.json", path, what="input reference", command="labkit bench input",
                              needed=("rungs", "ceiling", "rounds", "seconds", "batch_size", "load", "provenance"),
                              missing_ok=missing_ok, detail="rungs/ceiling",
                              valid=lambda doc: bool(doc["rungs"]) and isinstance(doc["ceiling"], dict))
    if results is None:
        return None
    results["summary"] = bench.summarize(results)
    return results


def input_switches(switches: dict, data: str = "photos", *, rounds: int = 2, seconds: float = 0.8,
                   batch_size: int = 64) -> dict:
    """A brief re-measure for the rung switches: naive, the naive pipeline with ``switches`` (name -> bool, the
    ladder's switches) turned on, and the full pipeline, in ``rounds`` interleaved rounds (best round counts).
    Returns ``{"switches": the ones on, "modes": [{"name", "img_s", "rounds"}], "load", "seconds", "rounds"}``."""
    import dataclasses
    from labkit.data import pipeline
    naive = dict(pipeline.LADDER)["naive"]
    names = [n for n in pipeline.LADDER[-1][1].added(naive)]
    unknown = sorted(set(switches) - set(names))
    if unknown:
        raise ValueError(f"switches: {unknown} unknown; allowed: {names}")
    chosen = dataclasses.replace(naive, **{k: bool(v) for k, v in switches.items()})
    on = [n for n in names if getattr(chosen, n)]
    label = "your switches: " + (", ".join(on) if on else "none (= naive)")
    ds = pipeline.train_dataset(data, batch_size, switches=chosen, process_index=0, process_count=1)
    results = input_ladder(data, rounds=rounds, seconds=seconds, batch_size=batch_size,
                           rungs=["naive", pipeline.LADDER[-1][0]], extra={label: ds}, ceiling=False)
    modes = results["rungs"][:1] + results["extra"] + results["rungs"][1:]
    return {"switches": on, "modes": [{k: m[k] for k in ("name", "img_s", "rounds")} for m in modes],
            "load": results["load"], "others_cores": results["others_cores"], "seconds": seconds, "rounds": rounds,
            "cores": results["cores"]}


def check_input_chain(make_chain, data: str = "photos", *, batch_size: int = 32, image_size: int = 224) -> dict:
    """Check a from-scratch tf.data chain against labkit's: ``make_chain(files, batch_size, image_size,
    epochs=1)`` over the validation files must give batches ``(images [B, S, S, 3], labels [B] int32)`` holding
    exactly the (label, image) pairs of ``labkit.data.eval_dataset`` (centre crop 224/256, fused decode,
    bicubic resize, 0-based labels), each once, in any order: a dropped, repeated, mislabelled or differently
    cropped image fails. Returns ``{"spec_ok", "same", "images", "missing", "extra", "spec"}``."""
    import collections
    import hashlib
    import numpy as np
    from labkit.data import eval_dataset, pipeline
    from labkit.data._tf import import_tf
    tf = import_tf()
    files, _ = pipeline.resolve_files(data, "validation")
    chain = make_chain(files, batch_size, image_size, epochs=1)
    spec = chain.element_spec
    spec_ok = (isinstance(spec, tuple) and len(spec) == 2 and spec[0].shape.as_list()[1:] == [image_size,
               image_size, 3] and spec[1].dtype == tf.int32 and spec[1].shape.rank == 1)
    dtype = spec[0].dtype if spec_ok else tf.float32

    def key(image, label):  # the image as the chain's dtype would hold it, then its bytes
        pixels = np.asarray(tf.cast(tf.cast(image, dtype), tf.float32))
        return int(label), hashlib.sha1(pixels.tobytes()).hexdigest()

    theirs = collections.Counter()
    if spec_ok:
        for images, labels in chain:
            theirs.update(key(i, lab) for i, lab in zip(images, labels))
    ours = collections.Counter()
    host_dtype = pipeline.Switches(bfloat16=dtype == tf.bfloat16)  # labkit's host cast, as the chain's
    for batch in eval_dataset(data, batch_size, image_size=image_size, switches=host_dtype, process_index=0,
                              process_count=1):
        ours.update(key(i, lab) for i, lab, m in zip(batch["image"], batch["label"], batch["mask"]) if m)
    missing, extra = sum((ours - theirs).values()), sum((theirs - ours).values())
    return {"spec_ok": spec_ok, "same": spec_ok and not missing and not extra, "images": sum(ours.values()),
            "missing": missing, "extra": extra, "spec": str(spec)}
