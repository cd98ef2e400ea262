"""labkit.bench.peers: the baselines compute what labkit computes (loss equality first; the same epoch of data)."""
import numpy as np
import pytest

from labkit.bench import peers


def test_flax_style_step_has_labkits_losses_and_the_check_can_fail():
    ctx = peers._setup_steps("resnet_tiny", 16, 64)
    pairs = peers.check_step_equality(ctx, steps=2)
    assert len(pairs) == 2 and pairs[0][0] != pairs[1][0]  # two real steps: the loss moved
    for ours, theirs in pairs:
        assert ours == pytest.approx(theirs, rel=1e-5)
    # A baseline that differs (its state one step ahead) is caught before anything is timed.
    peers._run(ctx, "flax-style", 1)
    with pytest.raises(AssertionError, match="loss differs"):
        peers.check_step_equality(ctx, steps=1)


def test_flax_style_step_is_pmap_with_pmean_and_global_batch_norm():
    import jax
    import jax.numpy as jnp
    import optax
    model, step = peers.make_flax_style_step("resnet_tiny", 10, optax.sgd(0.1))
    assert "BatchNorm" in [type(m).__mro__[1].__name__ for m in [model.norm_cls(axis_name="batch")]]
    assert model.bn_axis_name == "batch"
    assert type(step).__name__ in ("PmapFunction", "function") or callable(step)
    del jax, jnp


def test_flax_style_input_reads_the_same_epoch(tiny):
    assert peers.check_input_equality(tiny, batch_size=8, image_size=16) == 40
    batch = next(peers.flax_style_dataset(tiny, 8, image_size=16).as_numpy_iterator())
    assert batch["image"].shape == (8, 16, 16, 3) and np.abs(batch["image"].astype(np.float32)).max() < 10
