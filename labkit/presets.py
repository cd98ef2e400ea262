"""presets: named, documented starting points for ``Config``; each says its command and expected runtime.

Owns the table of presets. The hardware presets (``colab``, ``tpu-vm-slice``, ``gpu-resnet50``) adapt to the
devices when called: they read the device plan (``labkit.mesh.device_plan``), which starts JAX. So they first do
what must come before any backend exists, in the order training does it: the simulated CPU count, the GPU
latency-hiding flags, and joining the multi-host runtime (``jax.distributed``). Must not: validate
(``Config`` does) or run anything.
"""
from __future__ import annotations

from labkit.config import ALLOWED, Config

__all__ = ["PRESETS", "get_preset"]

_IMAGENET_TRAIN = 1_281_167  # stated, so the epoch length needs no pass over 1,024 shards


def cpu8_digits() -> Config:
    """The CPU lab run (default): a teaching-size ResNet on the bundled `digits`, 8 simulated devices.

    Command: ``labkit train --config cpu8-digits --workdir runs/digits`` (or ``make run``).
    Runtime: about 1-1.5 minutes on a 2-core CPU, compile included; stops at 97% validation top-1.
    Topology: the most square torus of the plan's mesh devices (2x4 on 8 simulated devices; 2x2 on a 4-chip
    slice), BN groups of 2 neighbouring replicas, gradients summed by 2-D torus all-reduce.
    Augmentation is milder than ImageNet's (crops keep >= 50% of a 32x32 digit; no mirror images).
    """
    return Config(model="resnet18_small", dataset="digits", image_size=32, global_batch=128, bn_group=2,
                  shape="", allreduce="torus2d", optimizer="sgd", base_lr=0.4, lr_schedule="poly",
                  warmup_epochs=2, epochs=20, weight_decay=5e-4, eval_every_epochs=1, crop_area_min=0.5,
                  random_flip=False, target_accuracy=0.97, cpu_devices=8,
                  collective_every_steps=20)  # a few in-training all-reduce timings before the target


def colab() -> Config:
    """Colab's one-chip runtimes (TPU v5e-1, TPU v6e-1, or one GPU: T4, L4, A100, H100): train on the chip.

    Command: ``labkit train --config colab --workdir runs/colab``; in ``04_train``: ``preset = "colab"``.
    Runtime: well under a minute of training on a TPU v5e-1 or an L4/A100/H100 plus about a minute of
    compilation (an estimate: no accelerator was at hand to measure it); 220 CPU-seconds on one CPU device
    (the rehearsal, ``LABKIT_COMPUTE_DEVICES=1``; reached 98% after 88 steps). Stops at 97% validation
    top-1 on the bundled `digits`.
    Adapts when called: one replica (a ``1x1`` torus, which the device plan puts on the accelerator), so BN
    is plain single-device BN over the batch; bfloat16 on TPUs and Ampere-or-newer GPUs, float16 (else float32)
    on older GPUs such as the T4, float32 on a CPU; batch 256 on an accelerator, 128 on a CPU.
    The mesh lessons (BN groups, all-reduce algorithms, 8 replicas) use ``cpu8-digits`` on simulated devices.
    """
    kind, n, platform = _compute()
    if platform == "tpu" or (platform == "gpu" and not kind.startswith("Tesla")):
        dtype = "bfloat16"
    elif platform == "gpu":  # Tesla T4 / V100 / P100: no fast bfloat16
        dtype = "float16" if "float16" in ALLOWED["dtype"] else "float32"
    else:
        dtype = "float32"
    batch = 128 if platform == "cpu" else 256
    return Config(model="resnet18_small", dataset="digits", image_size=32, global_batch=batch, bn_group=1,
                  shape="1x1", allreduce="xla", dtype=dtype, optimizer="sgd", base_lr=0.4, lr_schedule="poly",
                  warmup_epochs=2, epochs=20, weight_decay=5e-4, eval_every_epochs=1, crop_area_min=0.5,
                  random_flip=False, target_accuracy=0.97, collective_every_steps=0, cpu_devices=8)


def tpu_vm_slice() -> Config:
    """A Cloud TPU VM slice on one host: v5e-8 / v6e-8 (8 chips, a 2x4 torus) or v4-8 / v5p-8 (4 chips, 2x2).

    Command: ``labkit train --config tpu-vm-slice --set data_dir=gs://BUCKET/imagenet --workdir
    gs://BUCKET/runs/rn50`` on the TPU VM (``gcloud compute tpus tpu-vm ssh NAME``).
    Runtime: an estimate, not measured (no TPU here): about 3-4 hours for 90 epochs of ImageNet if the slice
    sustains ~10,000 images/s; the host's JPEG decoding may bound it (watch ``input_bound`` in the dashboard).
    Adapts when called: the torus is the chip grid (2x4 for 8 chips, 2x2 for 4, else the most square), laid
    out by chip coordinates. ResNet-50, bf16, global batch 1024 (128 or 256 per chip), per-chip BN, 2-D torus
    all-reduce, SGD Nesterov with warm-up and step decay; raw records are not cached in RAM (ImageNet's
    ~140 GB exceeds one host's memory).
    """
    _, n, _ = _compute()
    shape = {8: "2x4", 4: "2x2"}.get(n, "")
    return Config(model="resnet50", dataset="tfrecords", data_dir="imagenet", image_size=224,
                  num_classes=1000, label_offset=1, train_images=_IMAGENET_TRAIN, global_batch=1024, bn_group=1,
                  shape=shape, allreduce="torus2d", dtype="bfloat16", optimizer="sgd", base_lr=0.1,
                  lr_schedule="step", warmup_epochs=5, label_smoothing=0.1, epochs=90, eval_every_epochs=4,
                  deterministic=False, cache_records=False, bn_stats_every_steps=100, collective_every_steps=500,
                  log_every_steps=10)


def tpu_pod_resnet50() -> Config:
    """The paper's recipe: ResNet-50 on ImageNet at batch 32K on a TPU v3 pod (1024 chips, 2048 cores).

    Command: ``labkit train --config tpu-pod-resnet50 --set data_dir=gs://.../imagenet --workdir gs://...``
    (one process per host, ``jax.distributed`` auto-detected on Cloud TPU).
    Runtime: on the pod ~2-3 minutes to 76% top-1 (paper: 2.2 min); not runnable on a CPU. LARS, peak LR 34 with 12 warmup epochs, polynomial decay power 2, label
    smoothing 0.1, bf16, BN groups of 8 replicas (BN batch 128), 2-D torus all-reduce.
    """
    return Config(model="resnet50", dataset="tfrecords", data_dir="imagenet", image_size=224,
                  num_classes=1000, label_offset=1, train_images=_IMAGENET_TRAIN, global_batch=32768, bn_group=8, allreduce="torus2d",
                  dtype="bfloat16", optimizer="lars", peak_lr=34.0, lr_schedule="poly", warmup_epochs=12,
                  decay_power=2.0, label_smoothing=0.1, weight_decay=1e-4, epochs=90, eval_every_epochs=4,
                  target_accuracy=0.759, deterministic=False, bn_stats_every_steps=100,
                  collective_every_steps=500, log_every_steps=10)


def gpu_resnet50() -> Config:
    """ResNet-50 on one GPU box (1 to 8 GPUs), ImageNet TFRecords, bf16, SGD Nesterov at 256 images per GPU.

    Command: ``labkit train --config gpu-resnet50 --set data_dir=/data/imagenet --workdir runs/rn50``.
    Runtime: an estimate, not measured here: 6-11 hours for 90 epochs on one H100 (5,000-3,000 images/s),
    roughly 6-8 hours on 8 H100s, where the host's JPEG decoding bounds it.
    Adapts when called: one GPU is a ``1x1`` torus (the device plan puts it on the GPU), several are the most
    square torus with XLA's all-reduce (NVLink is no torus). Raw records are not cached in RAM: ImageNet's
    ~140 GB of JPEGs would not fit most hosts' memory, so each epoch re-reads them from disk.
    """
    _, n, _ = _compute()
    return Config(model="resnet50", dataset="tfrecords", data_dir="imagenet", image_size=224,
                  num_classes=1000, label_offset=1, train_images=_IMAGENET_TRAIN, global_batch=256 * n,
                  bn_group=1, shape="1x1" if n == 1 else "", allreduce="xla", dtype="bfloat16", optimizer="sgd",
                  base_lr=0.1, lr_schedule="step", warmup_epochs=5, label_smoothing=0.1, epochs=90,
                  eval_every_epochs=4, deterministic=False, cache_records=False, bn_stats_every_steps=100,
                  collective_every_steps=500, log_every_steps=10)


def _compute(cpu_devices: int = 8) -> tuple[str, int, str]:
    """(device kind, count, platform) of the plan's compute devices (this starts JAX: the start-up comes first)."""
    from labkit.mesh import device_plan, simulate_devices
    from labkit.multihost import initialize_multihost
    from labkit.train.overlap import enable_latency_hiding
    try:
        simulate_devices(cpu_devices)
    except RuntimeError:
        pass  # JAX already started (e.g. by lab.setup with another count): the plan is what it is
    enable_latency_hiding()  # GPU: XLA reads its flags when the GPU client starts, i.e. in device_plan()
    initialize_multihost()   # jax.distributed refuses to start once a backend exists
    compute = device_plan().compute
    return compute[0].device_kind, len(compute), compute[0].platform


def _fmnist(**changes) -> Config:
    """The paper-claims experiments' base: resnet_tiny on bundled Fashion-MNIST, 8 simulated devices, short."""
    base = Config(model="resnet_tiny", dataset="fashion_mnist", image_size=28, crop_area_min=0.85,
                  random_flip=True, shape="2x4", allreduce="torus2d", optimizer="sgd", lr_schedule="poly",
                  weight_decay=5e-4, collective_every_steps=0, bn_stats_every_steps=0, log_every_steps=8,
                  cpu_devices=8)
    return base.replace(**changes)


def fmnist_bn_groups() -> Config:
    """Experiment (a): BN group size vs final accuracy at 4 images per replica (global batch 32).

    Command: ``labkit run -p preset fmnist-bn-groups --sweep bn_group=1,2,4,8 --sweep seed=0,1,2``.
    One run: ``labkit train --config fmnist-bn-groups``.
    Runtime: about 1 minute per run on an idle 2-core CPU (12,288 images, one evaluation of 10,000); 4-5
    minutes measured on a shared one (load ~30). Results: labkit/results/bn_groups (RESULTS.md).
    """
    return _fmnist(global_batch=32, bn_group=1, base_lr=0.4, warmup_epochs=0.25, epochs=1.5,
                   train_images=8192, eval_every_epochs=1.5)


def fmnist_large_batch() -> Config:
    """Experiment (b): LARS vs SGD as the global batch grows, same epochs (6 epochs: 360,000 images per run).

    Command: ``labkit run -p preset fmnist-large-batch -p optimizer sgd --sweep base_lr=0.1,0.4
    --sweep global_batch=4096,1024,256`` and the same with ``-p optimizer lars --sweep base_lr=1,4``: a 2-point
    learning-rate grid per optimizer (peak LR = base LR x B/256), so each batch is compared at its better LR.
    One run: ``labkit train --config fmnist-large-batch --set global_batch=4096``.
    Why these sizes: 6 epochs of the full 60,000 images give the largest batch (4,096) 84 steps (14 full batches
    an epoch), with one epoch of warmup, and 16 px images keep a run to a few minutes (Fashion-MNIST stays
    learnable at 16 px).
    Runtime: 2-5 minutes per run on an idle 2-core CPU (1,404 steps at 256; 84 at 4,096).
    Results: labkit/results/large_batch (RESULTS.md).
    """
    return _fmnist(global_batch=256, bn_group=2, optimizer="lars", base_lr=1.0, image_size=16, warmup_epochs=1.0,
                   epochs=6.0, eval_every_epochs=6.0)


def fmnist_input_ladder() -> Config:
    """Experiment (c): the input ladder's effect on time-to-accuracy (target 65% top-1, batch 256).

    Command: ``labkit run -p preset fmnist-input-ladder --sweep input_rung=naive,parallel_map,private_threadpool``.
    One run: ``labkit train --config fmnist-input-ladder``.
    Runtime: about 1-2 minutes per run on an idle 2-core CPU (stops at the target); 4-8 minutes measured on a
    shared one (load ~30). Results: labkit/results/input_ladder (RESULTS.md).
    """
    return _fmnist(global_batch=256, bn_group=2, base_lr=0.4, warmup_epochs=0.5, epochs=5.0, train_images=8192,
                   eval_every_epochs=1.0, target_accuracy=0.65)


PRESETS = {"cpu8-digits": cpu8_digits, "colab": colab, "tpu-vm-slice": tpu_vm_slice,
           "tpu-pod-resnet50": tpu_pod_resnet50, "gpu-resnet50": gpu_resnet50, "fmnist-bn-groups": fmnist_bn_groups,
           "fmnist-large-batch": fmnist_large_batch, "fmnist-input-ladder": fmnist_input_ladder}


def get_preset(name: str) -> Config:
    """The preset's Config; an unknown name is an error listing the presets."""
    if name not in PRESETS:
        raise ValueError(f"config preset: unknown name {name!r}; allowed values: {sorted(PRESETS)}")
    return PRESETS[name]()
