"""bench.peers: ``labkit bench peers``: labkit against what its users would write instead, side by side.

Owns two comparisons in one process, modes interleaved block by block, several blocks, medians (``bench.timer``):
  step   labkit's SPMD step (``jax.shard_map`` on the torus mesh, BN over all replicas, ``psum`` of gradients)
         against a step in the style of the Flax ImageNet example: ``jax.pmap`` over the devices,
         ``flax.linen.BatchNorm(axis_name=...)`` for global BN, ``lax.pmean`` of gradients and metrics. Same
         model, global batch, devices, initial parameters and optimizer; the losses of two steps are checked
         equal before anything is timed.
  input  labkit's tf.data pipeline (every switch on) against a tf.data pipeline in the style of the Flax
         example (per-file reading interleaved, optional cache, repeat, shuffle, parallel decode with a sampled
         crop window, bicubic resize, flip, normalization on the host, batch, prefetch) on the same
         ImageNet-schema TFRecords; one epoch's labels are checked equal first.
Both baselines are written here from the public description of the example; no code is copied.
The last two printed lines are ``step ratio labkit/flax-style: R`` (the worst size) and
``input ratio labkit/flax-style: R``; R > 1 means labkit is faster. CPU timings are simulation.
Must not: change labkit's step or pipeline to suit the comparison (it builds them as training does).
"""
from __future__ import annotations


import numpy as np

from labkit.bench import timer

__all__ = ["HELP", "add_arguments", "run", "make_flax_style_step", "flax_style_dataset", "compare_steps",
           "check_step_equality", "check_input_equality"]

HELP = "labkit vs Flax-ImageNet-example-style step (pmap + global BN) and tf.data input, side by side"

_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


# ---------------------------------------------------------------------------------------------------------------
# The Flax-example-style step: pmap, linen BatchNorm(axis_name), pmean.
def _flax_norm():
    import flax.linen as nn

    class FlaxBatchNorm(nn.BatchNorm):
        """flax.linen.BatchNorm as the ResNet's norm layer (labkit's models pass capture_stats: unused here)."""
        capture_stats: bool = False

    return FlaxBatchNorm


def make_flax_style_step(model_name: str, num_classes: int, tx, *, axis_name: str = "batch"):
    """(model, pmapped ``step(state, images, labels) -> (state, metrics)``) in the Flax example's style.

    ``images``/``labels`` carry a leading device axis. Gradients and metrics are averaged with ``lax.pmean``;
    BN statistics are those of the global batch (``BatchNorm(axis_name=axis_name)``).
    """
    import jax
    import optax

    from labkit.models import create_model
    model = create_model(model_name, num_classes=num_classes, bn_axis_name=axis_name, norm_cls=_flax_norm())

    def step(state, images, labels):
        def loss_fn(params):
            logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, images,
                                             train=True, mutable=["batch_stats"])
            onehot = jax.nn.one_hot(labels, logits.shape[-1])
            return optax.softmax_cross_entropy(logits, onehot).mean(), (updates, logits)

        (loss, (updates, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = jax.lax.pmean(grads, axis_name)
        metrics = jax.lax.pmean({"loss": loss, "accuracy": (logits.argmax(-1) == labels).mean()}, axis_name)
        return state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"]), metrics

    return model, jax.pmap(step, axis_name=axis_name, donate_argnums=(0,))


def _setup_steps(model_name: str, image_size: int, global_batch: int, num_classes: int = 10, seed: int = 0):
    """Both steps on the same devices, initial state and batch; returns a dict of everything."""
    import jax
    import jax.numpy as jnp
    import optax

    from labkit.mesh import Topology
    from labkit.models import create_model
    from labkit.train.step import TrainState, create_train_state, make_train_step
    n = jax.device_count()
    topo = Topology.build(bn_group=n)  # global BN, as in the Flax example
    tx = optax.sgd(0.1, momentum=0.9)
    model = create_model(model_name, num_classes=num_classes, bn_axis_name=topo.bn_axes)
    state0 = create_train_state(model, tx, (image_size, image_size, 3), rng=seed)
    flax_model, flax_step = make_flax_style_step(model_name, num_classes, tx)
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(global_batch, image_size, image_size, 3)).astype(np.float32)
    labels = rng.integers(0, num_classes, global_batch).astype(np.int32)
    labkit_state = jax.device_put(state0, topo.replicated)
    # The same initial variables under linen's layer names; a fresh (zero) optimizer state, as labkit's is.
    flax_state = TrainState.create(apply_fn=flax_model.apply, params=_renamed(state0.params), tx=tx,
                                   batch_stats=_renamed(state0.batch_stats))
    flax_state = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(jnp.asarray(x), (n, *jnp.shape(x))), flax_state)
    put = jax.pmap(lambda x: x)  # device-resident per-device batches, as the example's prefetch leaves them
    return {"labkit": {"step": make_train_step(model, topo), "state": labkit_state,
                       "images": topo.shard_batch(images), "labels": topo.shard_batch(labels)},
            "flax-style": {"step": flax_step, "state": flax_state,
                           "images": put(images.reshape(n, -1, *images.shape[1:])),
                           "labels": put(labels.reshape(n, -1))},
            "replicas": n}


def _renamed(tree):
    """labkit's variables under the names flax gives the same layers when the norm class is linen's BatchNorm."""
    from flax import traverse_util
    flat = traverse_util.flatten_dict(tree)
    return traverse_util.unflatten_dict({tuple(k.replace("DistributedBatchNorm_", "FlaxBatchNorm_") for k in key): v
                                         for key, v in flat.items()})


def _run(ctx: dict, mode: str, steps: int):
    m = ctx[mode]
    for _ in range(steps):
        out = m["step"](m["state"], m["images"], m["labels"])
        m["state"], metrics = out[0], out[1]
    return metrics["loss"]


def check_step_equality(ctx: dict, steps: int = 2, rtol: float = 1e-5) -> list[tuple[float, float]]:
    """The losses of ``steps`` steps, (labkit, flax-style); raises if any pair differs beyond ``rtol``."""
    pairs = []
    for i in range(steps):
        a = float(_run(ctx, "labkit", 1))
        b = float(np.asarray(_run(ctx, "flax-style", 1))[0])
        pairs.append((a, b))
        if not np.isclose(a, b, rtol=rtol, atol=1e-6):
            raise AssertionError(f"bench peers: step {i} loss differs: labkit {a!r} vs flax-style {b!r} "
                                 f"(rtol {rtol}); the comparison would not be of the same computation")
    return pairs


def compare_steps(model_name: str, image_size: int, global_batch: int, *, blocks: int = 5, steps: int = 5,
                  warmup: int = 1) -> dict:
    """Median seconds per step of each mode (interleaved blocks), after the loss equality check."""
    ctx = _setup_steps(model_name, image_size, global_batch)
    losses = check_step_equality(ctx)
    # Each block ends when its last step's *state* is ready too, not just its loss: no update leaks into the next
    # block's clock (the same rule for both modes).
    modes = {mode: (lambda mode=mode: (_run(ctx, mode, steps), ctx[mode]["state"]))
             for mode in ("labkit", "flax-style")}
    times = timer.interleave(modes, blocks, warmup=warmup)
    med = {mode: t / steps for mode, t in timer.medians(times).items()}
    return {"model": model_name, "image_size": image_size, "global_batch": global_batch, "losses": losses,
            "seconds": med, "ratio": med["flax-style"] / med["labkit"], "blocks": blocks, "steps": steps}


# ---------------------------------------------------------------------------------------------------------------
# The Flax-example-style input pipeline.
def flax_style_dataset(data, batch_size: int, *, image_size: int = 224, cache: bool = True, shuffle: bool = True,
                       train: bool = True, seed: int = 0, half_precision: bool = True, threads: int | None = None):
    """Host batches ``{"image": [B,S,S,3] normalized, "label": [B]}`` read the way the Flax example reads.

    ImageNet-schema TFRecords (``image/encoded``, ``image/class/label`` minus the schema's label offset).
    """
    import os

    from labkit.data._tf import import_tf
    from labkit.data.pipeline import resolve_files
    tf = import_tf()
    files, schema = resolve_files(data, "train")
    image_key, label_key = schema["keys"]
    offset = 1 if schema["label_offset"] is None else schema["label_offset"]
    dtype = tf.bfloat16 if half_precision else tf.float32

    def decode(record):
        f = tf.io.parse_single_example(record, {image_key: tf.io.FixedLenFeature([], tf.string),
                                                label_key: tf.io.FixedLenFeature([], tf.int64)})
        shape = tf.io.extract_jpeg_shape(f[image_key])
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            shape, tf.zeros([0, 0, 4], tf.float32), min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        image = tf.io.decode_and_crop_jpeg(f[image_key], window, channels=3)
        image = tf.image.resize([image], [image_size, image_size], method="bicubic")[0]
        image = tf.image.random_flip_left_right(image)
        image = (image - tf.constant(_MEAN, shape=[1, 1, 3])) / tf.constant(_STD, shape=[1, 1, 3])
        return {"image": tf.cast(image, dtype), "label": tf.cast(f[label_key] - offset, tf.int32)}

    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=16, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
    if train:
        ds = ds.repeat()
        if shuffle:
            ds = ds.shuffle(16 * batch_size, seed=seed)
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.prefetch(10)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads or os.cpu_count() or 2
    return ds.with_options(options)


def _labkit_dataset(data, batch_size: int, image_size: int, cache: bool, shuffle: bool = True, train: bool = True):
    from labkit.data import Switches, train_dataset
    return train_dataset(data, batch_size, image_size=image_size, switches=Switches(cache=cache, shuffle=shuffle),
                         num_epochs=None if train else 1, process_index=0, process_count=1)


def check_input_equality(data, batch_size: int = 8, image_size: int = 32) -> int:
    """One epoch of both pipelines (no shuffle) holds the same labels; returns the number of images."""
    ours = [b["label"] for b in _labkit_dataset(data, batch_size, image_size, False, shuffle=False,
                                                train=False).as_numpy_iterator()]
    theirs = [b["label"] for b in flax_style_dataset(data, batch_size, image_size=image_size, cache=False,
                                                     train=False).as_numpy_iterator()]
    a, b = np.sort(np.concatenate(ours)), np.sort(np.concatenate(theirs))
    if a.shape != b.shape or not np.array_equal(a, b):
        raise AssertionError(f"bench peers: one epoch differs: labkit read {a.size} images, flax-style {b.size} "
                             "(or other labels); the comparison would not be of the same data")
    return int(a.size)


def compare_input(data, batch_size: int, image_size: int, *, cache: bool = True, blocks: int = 3,
                  batches: int = 5, drain: int = 12) -> dict:
    """Median images/s of each pipeline: interleaved blocks of ``batches`` batches on live iterators, each block
    after ``drain`` untimed batches (what the idle pipeline prefetched meanwhile is not counted)."""
    images = check_input_equality(data, batch_size=8, image_size=32)
    iterators = {"labkit": _labkit_dataset(data, batch_size, image_size, cache).as_numpy_iterator(),
                 "flax-style": flax_style_dataset(data, batch_size, image_size=image_size, cache=cache)
                 .as_numpy_iterator()}

    # Drain outside the clock: time only the ``batches`` after it.
    times = {mode: [] for mode in iterators}
    for _ in range(blocks):
        for mode, it in iterators.items():
            for _ in range(drain):
                next(it)
            times[mode].append(timer.timed(lambda it=it: [next(it) for _ in range(batches)])[1])
    med = timer.medians(times)
    rates = {mode: batches * batch_size / t for mode, t in med.items()}
    return {"images_per_s": rates, "ratio": rates["labkit"] / rates["flax-style"], "epoch_images": images,
            "cache": cache, "blocks": blocks, "batches": batches}


# ---------------------------------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    from labkit.cli import add_topology_args
    add_topology_args(p)
    p.add_argument("--sizes", default="resnet18_small:32,resnet18_small:64,resnet18:64",
                   help="model:image_size pairs for the step comparison (default: the issue's three)")
    p.add_argument("--global-batch", type=int, default=128, help="global batch of the step comparison (default 128)")
    p.add_argument("--blocks", type=int, default=5, help="interleaved blocks per mode (median reported)")
    p.add_argument("--steps", type=int, default=5, help="steps per block")
    p.add_argument("--data", default="photos", help="ImageNet-schema TFRecords: bundled name or folder")
    p.add_argument("--input-batch", type=int, default=64, help="batch of the input comparison (default 64)")
    p.add_argument("--input-image-size", type=int, default=224,
                   help="image side of the input comparison (default 224)")
    p.add_argument("--input-batches", type=int, default=5, help="timed batches per input block")
    p.add_argument("--no-cache", action="store_true", help="both pipelines without their record cache")
    p.add_argument("--skip-input", action="store_true", help="skip the input-pipeline comparison")
    p.add_argument("--skip-step", action="store_true", help="skip the training-step comparison")


def _sizes(text: str) -> list[tuple[str, int]]:
    from labkit.config import ALLOWED
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, size = item.partition(":")
        if name not in ALLOWED["model"] or not size.isdigit():
            raise ValueError(f"--sizes: {item!r} is not model:image_size; models: {list(ALLOWED['model'])}")
        out.append((name, int(size)))
    return out


def run(args) -> int:
    from labkit.cli import build_topology
    topo = build_topology(args)
    sizes = _sizes(args.sizes)
    if args.global_batch % topo.num_replicas:
        raise ValueError(f"--global-batch: {args.global_batch} is not divisible by the {topo.num_replicas} replicas")
    machine, _ = timer.describe_machine(topo.num_replicas)
    print(f"labkit bench peers: {machine}")
    print(f"modes interleaved, {args.blocks} blocks, medians; R > 1: labkit faster")
    step_ratio = input_ratio = float("nan")
    if not args.skip_step:
        ratios = []
        print(f"{'step':<22}{'labkit ms':>11}{'flax-style ms':>15}{'ratio':>8}   losses equal (2 steps)")
        for model, size in sizes:
            r = compare_steps(model, size, args.global_batch, blocks=args.blocks, steps=args.steps)
            ratios.append(r["ratio"])
            print(f"{model + f' {size}px':<22}{r['seconds']['labkit'] * 1e3:>11.1f}"
                  f"{r['seconds']['flax-style'] * 1e3:>15.1f}{r['ratio']:>8.3f}   "
                  + ", ".join(f"{a:.6f}={b:.6f}" for a, b in r["losses"]))
        step_ratio = min(ratios)
    if not args.skip_input:
        r = compare_input(args.data, args.input_batch, args.input_image_size, cache=not args.no_cache,
                          blocks=args.blocks, batches=args.input_batches)
        print(f"input {args.data} {args.input_image_size}px batch {args.input_batch} (cache {'on' if r['cache'] else 'off'}"
              f", same {r['epoch_images']} images per epoch): labkit {r['images_per_s']['labkit']:.1f} img/s, "
              f"flax-style {r['images_per_s']['flax-style']:.1f} img/s")
        input_ratio = r["ratio"]
    print(f"step ratio labkit/flax-style: {step_ratio:.3f}")
    print(f"input ratio labkit/flax-style: {input_ratio:.3f}")
    return 0
