"""labkit.train.optim: schedule values at known points; LARS/SGD exclusions checked against numpy formulas."""
import jax
import jax.numpy as jnp
import optax
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


def _reference_lars(params, grads_per_step, lrs, wd, m, eta=0.001):
    """The paper's reference LARS in float64 numpy: trust = eta|w| / (|g| + wd|w|); v = m v + lr trust (g + wd w);
    w -= v. BN parameters and biases (1-D): v = m v + lr g."""
    w = {k: {kk: v.astype(np.float64) for kk, v in d.items()} for k, d in params.items()}
    vel = {k: {kk: np.zeros_like(v) for kk, v in d.items()} for k, d in w.items()}
    for grads, lr in zip(grads_per_step, lrs):
        for k in w:
            for kk in w[k]:
                g, x = grads[k][kk].astype(np.float64), w[k][kk]
                if x.ndim > 1:
                    wn, gn = np.linalg.norm(x), np.linalg.norm(g)
                    trust = eta * wn / (gn + wd * wn) if wn > 0 and gn > 0 else 1.0
                    vel[k][kk] = m * vel[k][kk] + lr * trust * (g + wd * x)
                else:
                    vel[k][kk] = m * vel[k][kk] + lr * g
                w[k][kk] = x - vel[k][kk]
    return w


def test_lars_matches_the_reference_formula_over_several_steps():
    # Weight decay 0.5 and gradients pointing against the weights: |g + wd w| is far below |g| + wd |w|, so
    # optax.lars's trust ratio (which divides by the former) would be much larger than the reference's.
    cfg = Config(optimizer="lars", peak_lr=3.0, warmup_epochs=0.3, epochs=10, weight_decay=0.5, momentum=0.9)
    params, _ = _params_and_grads()
    rng = np.random.default_rng(1)
    steps = 5
    grads_per_step = [jax.tree_util.tree_map(lambda w: (-0.5 * w + 0.05 * rng.normal(size=w.shape)).astype(
        np.float32), params) for _ in range(steps)]
    tx = create_optimizer(cfg, SPE)
    schedule = create_schedule(cfg, SPE)
    p, state = jax_tree(params), tx.init(jax_tree(params))
    for grads in grads_per_step:
        updates, state = tx.update(jax_tree(grads), state, p)
        p = optax.apply_updates(p, updates)
    want = _reference_lars(params, grads_per_step, [float(schedule(i)) for i in range(steps)], 0.5, 0.9)
    for k in want:
        for kk in want[k]:
            np.testing.assert_allclose(np.asarray(p[k][kk]), want[k][kk], rtol=1e-5, atol=1e-6, err_msg=f"{k}/{kk}")
    moved = np.abs(want["conv"]["kernel"] - params["conv"]["kernel"]).max()
    assert moved > 1e-4  # the trust-ratio path really moved the kernel


def test_lars_trust_ratio_is_one_for_a_zero_weight_or_gradient():
    from labkit.train.optim import lars
    tx = lars(1.0, weight_decay=0.1, momentum=0.0)
    w = {"k": jnp.zeros((2, 2))}
    g = {"k": jnp.ones((2, 2))}
    updates, _ = tx.update(g, tx.init(w), w)
    np.testing.assert_allclose(np.asarray(updates["k"]), -np.ones((2, 2)))  # trust 1, no decay on zeros


def test_sgd_nesterov_decays_kernels_only():
    cfg = Config(optimizer="sgd", peak_lr=0.5, warmup_epochs=0, epochs=10, weight_decay=1e-2, momentum=0.9)
    params, grads, updates = _first_update(cfg)
    # First Nesterov step: trace t = g, update = g + 0.9 t = 1.9 g.
    d = grads["conv"]["kernel"] + 1e-2 * params["conv"]["kernel"]
    np.testing.assert_allclose(np.asarray(updates["conv"]["kernel"]), -0.5 * 1.9 * d, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(updates["bn"]["scale"]), -0.5 * 1.9 * grads["bn"]["scale"], rtol=1e-5)
