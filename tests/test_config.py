"""labkit.config: validation names the key, the value and the allowed values; overrides parse by type."""
import pytest

from labkit.config import ALLOWED, Config, ConfigError
from labkit.models import MODELS


def test_defaults_are_valid_and_round_trip():
    cfg = Config()
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert cfg.learning_rate == pytest.approx(cfg.base_lr * cfg.global_batch / 256)


@pytest.mark.parametrize("key", sorted(ALLOWED))
def test_choice_keys_list_allowed_values(key):
    with pytest.raises(ConfigError, match=rf"config\.{key}: 'nope' is not allowed; allowed values: \["):
        Config(**{key: "nope"})


def test_overrides_parse_by_field_type():
    cfg = Config().override(["bn_group=4", "allreduce=ring", "deterministic=false", "step_epochs=10,20",
                             "base_lr=0.5", "epochs=3"])
    assert (cfg.bn_group, cfg.allreduce, cfg.deterministic, cfg.step_epochs, cfg.base_lr, cfg.epochs) == \
        (4, "ring", False, (10.0, 20.0), 0.5, 3.0)
    # papermill passes typed values; ints are accepted for float keys
    assert Config().override({"epochs": 5, "bn_group": 8}).epochs == 5.0


def test_unknown_key_and_bad_values():
    with pytest.raises(ConfigError, match=r"unknown key 'bn_groups'; allowed keys: \['model'"):
        Config().override(["bn_groups=2"])
    with pytest.raises(ConfigError, match=r"config\.bn_group: cannot read 'two' as int"):
        Config().override(["bn_group=two"])
    with pytest.raises(ConfigError, match=r"config\.bn_group: expected int, got '2'"):
        Config(bn_group="2")
    with pytest.raises(ConfigError, match=r"config\.label_smoothing: 1\.0 is out of range; allowed: >= 0 and < 1"):
        Config(label_smoothing=1.0)
    with pytest.raises(ConfigError, match=r"config\.width: 0\.0 is out of range; allowed: > 0"):
        Config(width=0)
    with pytest.raises(ConfigError, match=r"config\.shape: expected 'XxY'"):
        Config(shape="2by4")
    with pytest.raises(ConfigError, match=r"config\.data_dir: dataset 'tfrecords' needs data_dir"):
        Config(dataset="tfrecords")
    with pytest.raises(ConfigError, match=r"config\.override 'x' is not key=value|override 'x' is not key=value"):
        Config().override(["x"])


def test_checks_that_need_the_replica_count():
    with pytest.raises(ConfigError, match=r"config\.global_batch: 100 is not divisible by the 8 replicas; "
                                          r"allowed: multiples of 8"):
        Config(global_batch=100).check_for(8)
    with pytest.raises(ConfigError, match=r"config\.bn_group: 3 does not tile .* allowed values: \[1, 2, 4, 8\]"):
        Config(bn_group=3).check_for(8, [1, 2, 4, 8])
    Config(global_batch=64, bn_group=4).check_for(8, [1, 2, 4, 8])


def test_allowed_models_match_the_model_table():
    assert set(ALLOWED["model"]) == set(MODELS)


def test_allowed_dtypes_and_allreduce_match_what_the_code_offers():
    """float16: the models refuse it too (no loss scaling in labkit), so Config and models agree."""
    from labkit.collectives import ALGORITHMS
    from labkit.models import _DTYPES, create_model
    assert set(ALLOWED["dtype"]) == set(_DTYPES) == {"float32", "bfloat16"}
    assert tuple(ALLOWED["allreduce"]) == ALGORITHMS
    with pytest.raises(ValueError, match=r"dtype: 'float16' is not supported; allowed values: \['bfloat16'"):
        create_model("resnet_tiny", dtype="float16")


def test_differences():
    a, b = Config(), Config(bn_group=4, log_every_steps=7)
    assert a.differences(b) == {"bn_group": (2, 4), "log_every_steps": (1, 7)}
    assert a.differences(b, ignore=("log_every_steps",)) == {"bn_group": (2, 4)}
