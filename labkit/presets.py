"""presets: named, documented starting points for ``Config``; each says its command and expected runtime.

Owns the table of presets. Must not: validate (``Config`` does) or run anything.
"""
from __future__ import annotations

from labkit.config import Config

__all__ = ["PRESETS", "get_preset"]

_IMAGENET_TRAIN = 1_281_167  # stated, so the epoch length needs no pass over 1,024 shards


def cpu8_digits() -> Config:
    """The CPU lab run (default): a teaching-size ResNet on the bundled `digits`, 8 simulated devices.

    Command: ``labkit train --config cpu8-digits --workdir runs/digits`` (or ``make run``).
    Runtime: about 1-1.5 minutes on a 2-core CPU, compile included; stops at 97% validation top-1.
    Topology: 2x4 torus, BN groups of 2 neighbouring replicas, gradients summed by 2-D torus all-reduce.
    Augmentation is milder than ImageNet's (crops keep >= 50% of a 32x32 digit; no mirror images).
    """
    return Config(model="resnet18_small", dataset="digits", image_size=32, global_batch=128, bn_group=2,
                  shape="2x4", allreduce="torus2d", optimizer="sgd", base_lr=0.4, lr_schedule="poly",
                  warmup_epochs=2, epochs=20, weight_decay=5e-4, eval_every_epochs=1, crop_area_min=0.5,
                  random_flip=False, target_accuracy=0.97, cpu_devices=8)


def colab_tpu() -> Config:
    """A Colab / Cloud TPU v2-8 or v3-8 (8 cores): ResNet-18 on `photos` throughput or your TFRecords.

    Command: ``labkit train --config colab-tpu --set dataset=tfrecords --set data_dir=gs://...``.
    Runtime: minutes per epoch of a small data set; bf16 compute; BN groups of 2 cores.
    """
    return Config(model="resnet18", dataset="digits", image_size=32, global_batch=1024, bn_group=2,
                  allreduce="torus2d", dtype="bfloat16", optimizer="sgd", base_lr=0.1, epochs=30,
                  warmup_epochs=2, target_accuracy=0.97)


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
    """ResNet-50 on one GPU box (e.g. 8 x H100), ImageNet TFRecords, bf16, SGD Nesterov at batch 2048.

    Command: ``labkit train --config gpu-resnet50 --set data_dir=/data/imagenet --workdir runs/rn50``.
    Runtime: roughly 6-8 hours for 90 epochs on 8 H100s (input-bound without a fast host).
    """
    return Config(model="resnet50", dataset="tfrecords", data_dir="imagenet", image_size=224,
                  num_classes=1000, label_offset=1, train_images=_IMAGENET_TRAIN, global_batch=2048, bn_group=1, allreduce="xla",
                  dtype="bfloat16", optimizer="sgd", base_lr=0.1, lr_schedule="step", warmup_epochs=5,
                  label_smoothing=0.1, epochs=90, eval_every_epochs=4, deterministic=False,
                  bn_stats_every_steps=100, collective_every_steps=500, log_every_steps=10)


def _fmnist(**changes) -> Config:
    """The paper-claims experiments' base: resnet_tiny on bundled Fashion-MNIST, 8 simulated devices, short."""
    base = Config(model="resnet_tiny", dataset="fashion_mnist", image_size=28, crop_area_min=0.85,
                  random_flip=True, shape="2x4", allreduce="torus2d", optimizer="sgd", lr_schedule="poly",
                  weight_decay=5e-4, collective_every_steps=0, bn_stats_every_steps=0, log_every_steps=8,
                  cpu_devices=8)
    return base.replace(**changes)


def fmnist_bn_groups() -> Config:
    """Experiment (a): BN group size vs final accuracy at 4 images per replica (global batch 32).

    Command: ``labkit run -p preset fmnist-bn-groups --sweep bn_group=1,2,4,8 --sweep seed=0,1,2``. One run: ``labkit train --config fmnist-bn-groups``.
    Runtime: about 1 minute per run on a 2-core CPU (16,384 images, one evaluation of 10,000).
    """
    return _fmnist(global_batch=32, bn_group=1, base_lr=0.4, warmup_epochs=0.25, epochs=2.0,
                   train_images=8192, eval_every_epochs=2.0)


def fmnist_large_batch() -> Config:
    """Experiment (b): LARS vs SGD as the global batch grows, same epochs (49,152 images per run).

    Command: ``labkit run -p preset fmnist-large-batch --sweep global_batch=256,1024,4096,8192`` (LARS), and
    the same with ``-p optimizer sgd -p base_lr 0.2`` (SGD-Nesterov, linear scaling rule).
    One run: ``labkit train --config fmnist-large-batch --set global_batch=4096``.
    Runtime: about 1-1.5 minutes per run on a 2-core CPU.
    """
    return _fmnist(global_batch=256, bn_group=2, optimizer="lars", base_lr=1.0, warmup_epochs=0.5, epochs=3.0,
                   train_images=16384, eval_every_epochs=3.0)


def fmnist_input_ladder() -> Config:
    """Experiment (c): the input ladder's effect on time-to-accuracy (target 70% top-1, batch 256).

    Command: ``labkit run -p preset fmnist-input-ladder --sweep input_rung=naive,parallel_map,prefetch,private_threadpool``. One run: ``labkit train --config fmnist-input-ladder``.
    Runtime: about 1 minute per run on a 2-core CPU (stops at the target).
    """
    return _fmnist(global_batch=256, bn_group=2, base_lr=0.4, warmup_epochs=0.5, epochs=5.0, train_images=8192,
                   eval_every_epochs=1.0, target_accuracy=0.70)


PRESETS = {"cpu8-digits": cpu8_digits, "colab-tpu": colab_tpu, "tpu-pod-resnet50": tpu_pod_resnet50,
           "gpu-resnet50": gpu_resnet50, "fmnist-bn-groups": fmnist_bn_groups,
           "fmnist-large-batch": fmnist_large_batch, "fmnist-input-ladder": fmnist_input_ladder}


def get_preset(name: str) -> Config:
    """The preset's Config; an unknown name is an error listing the presets."""
    if name not in PRESETS:
        raise ValueError(f"config preset: unknown name {name!r}; allowed values: {sorted(PRESETS)}")
    return PRESETS[name]()
