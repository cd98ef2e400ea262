"""labkit.train.optim: schedule values at known points; LARS/SGD exclusions checked against numpy formulas."""
import jax.numpy as jnp
import numpy as np
import pytest

from labkit.config import Config
from labkit.train.optim import create_optimizer, create_schedule

SPE = 10  # steps per epoch


def test_poly_schedule_warmup_midway_end():
    cfg = Config(peak_lr=2.0, warmup_epochs=2, epochs=12, decay_power=2.0, lr_schedule="poly")
    lr = create_schedule(cfg, SPE)
    assert float(lr(0)) == 0.0
    assert float(lr(10)) == pytest.approx(1.0)        # half-way through warmup: linear
    assert float(lr(20)) == pytest.approx(2.0)        # end of warmup: peak
    assert float(lr(70)) == pytest.approx(2.0 * 0.5 ** 2)  # half-way through decay, power 2
    assert float(lr(120)) == pytest.approx(0.0, abs=1e-7)


def test_step_schedule_and_linear_scaling():
    cfg = Config(base_lr=0.1, global_batch=1024, warmup_epochs=1, epochs=9, lr_schedule="step",
                 step_epochs=(3, 6, 8))
    assert cfg.learning_rate == pytest.approx(0.4)    # 0.1 x 1024 / 256
    lr = create_schedule(cfg, SPE)
    assert float(lr(10)) == pytest.approx(0.4)
    assert float(lr(29)) == pytest.approx(0.4)
    assert float(lr(30)) == pytest.approx(0.04)
    assert float(lr(60)) == pytest.approx(0.004)
    assert float(lr(85)) == pytest.approx(0.0004)


def _params_and_grads():
    rng = np.random.default_rng(0)
    params = {"conv": {"kernel": rng.normal(size=(3, 3, 4, 8)).astype(np.float32)},
              "bn": {"scale": rng.normal(size=8).astype(np.float32), "bias": rng.normal(size=8).astype(np.float32)},
              "head": {"bias": rng.normal(size=5).astype(np.float32)}}
    grads = {"conv": {"kernel": rng.normal(size=(3, 3, 4, 8)).astype(np.float32)},
             "bn": {"scale": rng.normal(size=8).astype(np.float32), "bias": rng.normal(size=8).astype(np.float32)},
             "head": {"bias": rng.normal(size=5).astype(np.float32)}}
    return params, grads


def _first_update(cfg):
    params, grads = _params_and_grads()
    tx = create_optimizer(cfg, SPE)
    updates, _ = tx.update(jax_tree(grads), tx.init(jax_tree(params)), jax_tree(params))
    return params, grads, updates


def jax_tree(t):
    return {k: {kk: jnp.asarray(v) for kk, v in d.items()} for k, d in t.items()}


def test_lars_excludes_bn_and_bias_from_trust_ratio_and_decay():
    cfg = Config(optimizer="lars", peak_lr=3.0, warmup_epochs=0, epochs=10, weight_decay=1e-2, momentum=0.9)
    params, grads, updates = _first_update(cfg)
    lr = 3.0  # step 0 of the decay is the peak
    w, g = params["conv"]["kernel"], grads["conv"]["kernel"]
    d = g + 1e-2 * w
    trust = 0.001 * np.linalg.norm(w) / np.linalg.norm(d)
    np.testing.assert_allclose(np.asarray(updates["conv"]["kernel"]), -lr * trust * d, rtol=1e-5)
    for mod, name in (("bn", "scale"), ("bn", "bias"), ("head", "bias")):  # plain momentum SGD, no decay
        np.testing.assert_allclose(np.asarray(updates[mod][name]), -lr * grads[mod][name], rtol=1e-5)


def test_sgd_nesterov_decays_kernels_only():
    cfg = Config(optimizer="sgd", peak_lr=0.5, warmup_epochs=0, epochs=10, weight_decay=1e-2, momentum=0.9)
    params, grads, updates = _first_update(cfg)
    # First Nesterov step: trace t = g, update = g + 0.9 t = 1.9 g.
    d = grads["conv"]["kernel"] + 1e-2 * params["conv"]["kernel"]
    np.testing.assert_allclose(np.asarray(updates["conv"]["kernel"]), -0.5 * 1.9 * d, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(updates["bn"]["scale"]), -0.5 * 1.9 * grads["bn"]["scale"], rtol=1e-5)
