"""labkit.presets: every preset is a valid Config with a documented command and runtime; the paper's recipe."""
import pytest

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
        ("digits", "2x4", 2, "torus2d", 0.97)
    cfg.check_for(8, [1, 2, 4, 8])


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown name 'cpu8'; allowed values: \['colab-tpu', 'cpu8-digits'"):
        get_preset("cpu8")
