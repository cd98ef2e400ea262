"""labkit.presets: every preset is a valid Config with a documented command and runtime; the paper's recipe."""
import re

import jax
import pytest

from labkit import presets
from labkit.config import ALLOWED
from labkit.mesh import Topology, allowed_bn_groups
from labkit.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_is_valid_and_documented(name):
    cfg = get_preset(name)
    doc = PRESETS[name].__doc__
    assert "Command:" in doc and "Runtime:" in doc and f"--config {name}" in doc
    assert cfg.global_batch > 0


def test_paper_recipe():
    cfg = get_preset("tpu-pod-resnet50")
    assert (cfg.model, cfg.global_batch, cfg.optimizer, cfg.learning_rate, cfg.warmup_epochs,
            cfg.decay_power, cfg.label_smoothing, cfg.dtype, cfg.bn_group) == \
        ("resnet50", 32768, "lars", 34.0, 12.0, 2.0, 0.1, "bfloat16", 8)
    replicas = 2048  # 1024 chips x 2 cores
    assert cfg.global_batch // replicas == 16 and cfg.bn_group * cfg.global_batch // replicas == 128
    cfg.check_for(replicas)


def test_default_lab_run():
    cfg = get_preset("cpu8-digits")
    assert (cfg.dataset, cfg.shape, cfg.bn_group, cfg.allreduce, cfg.target_accuracy) == \
        ("digits", "", 2, "torus2d", 0.97)
    cfg.check_for(8, [1, 2, 4, 8])
    assert Topology.build(shape=cfg.shape or None, bn_group=cfg.bn_group).shape == (2, 4)  # as the loop builds it
    cfg.check_for(4, allowed_bn_groups((2, 2)))   # a 4-chip slice (v4-8, v5p-8) runs it too


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown name 'cpu8'; allowed values: \['colab', 'cpu8-digits'"):
        get_preset("cpu8")


def test_no_preset_claims_an_eight_core_colab():
    for name, make in PRESETS.items():
        assert not re.search(r"v[23]-8|\b8 cores|8-core|colab-tpu", make.__doc__, re.I), name


def _on(monkeypatch, kind, n, platform):
    monkeypatch.setattr(presets, "_compute", lambda cpu_devices=8: (kind, n, platform))


@pytest.mark.parametrize("kind, platform, dtype, batch", [
    ("TPU v5 lite", "tpu", "bfloat16", 256), ("TPU v6 lite", "tpu", "bfloat16", 256),
    ("NVIDIA L4", "gpu", "bfloat16", 256), ("NVIDIA H100 80GB HBM3", "gpu", "bfloat16", 256),
    ("Tesla T4", "gpu", "float16" if "float16" in ALLOWED["dtype"] else "float32", 256),
    ("cpu", "cpu", "float32", 128)])
def test_colab_adapts_to_the_one_chip(monkeypatch, kind, platform, dtype, batch):
    _on(monkeypatch, kind, 1, platform)
    cfg = get_preset("colab")
    assert (cfg.shape, cfg.bn_group, cfg.dtype, cfg.global_batch) == ("1x1", 1, dtype, batch)
    cfg.check_for(1, allowed_bn_groups((1, 1)))


@pytest.mark.parametrize("kind, n, shape", [("TPU v5 lite", 8, "2x4"), ("TPU v6 lite", 8, "2x4"),
                                            ("TPU v4", 4, "2x2"), ("TPU v5", 4, "2x2"), ("TPU v5 lite", 16, "")])
def test_tpu_vm_slice_torus_is_the_chip_grid(monkeypatch, kind, n, shape):
    _on(monkeypatch, kind, n, "tpu")
    cfg = get_preset("tpu-vm-slice")
    assert cfg.shape == shape and not cfg.cache_records and cfg.dtype == "bfloat16"
    grid = tuple(int(v) for v in shape.split("x")) if shape else (4, 4)
    cfg.check_for(n, allowed_bn_groups(grid))


@pytest.mark.parametrize("n, shape", [(1, "1x1"), (2, ""), (8, "")])
def test_gpu_box_scales_with_its_gpus_and_does_not_cache_imagenet(monkeypatch, n, shape):
    _on(monkeypatch, "NVIDIA H100 80GB HBM3", n, "gpu")
    cfg = get_preset("gpu-resnet50")
    assert (cfg.shape, cfg.global_batch, cfg.global_batch // n, cfg.cache_records) == (shape, 256 * n, 256, False)
    cfg.check_for(n)


def test_colab_trains_on_the_compute_device_of_the_one_chip_plan(monkeypatch):
    monkeypatch.setenv("LABKIT_COMPUTE_DEVICES", "1")
    cfg = get_preset("colab")
    topo = Topology.build(shape=cfg.shape, bn_group=cfg.bn_group)  # what the training loop builds
    assert list(topo.mesh.devices.flat) == jax.devices()[:1]
    assert get_preset("gpu-resnet50").shape == "1x1"


def test_hardware_presets_join_the_job_before_they_read_the_devices(tmp_path):
    """gpu-resnet50, tpu-vm-slice and colab read the device plan, which starts JAX: the multi-host join and
    XLA's GPU flags must come first (probe: tests/test_cli.py)."""
    from tests.test_cli import _assert_started_first, probe_entry_points
    names = ("gpu-resnet50", "tpu-vm-slice", "colab")
    seen = probe_entry_points({n: f"from labkit.presets import get_preset; get_preset({n!r})" for n in names},
                              tmp_path)
    for name in names:
        _assert_started_first(name, seen[name])
