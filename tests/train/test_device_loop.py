"""labkit.train.device_loop: K steps per call equal K single steps, the guard sees BN statistics, and the loop
copies nothing to the host between log points."""
import contextlib

import jax
import numpy as np
import optax
import pytest

from labkit.config import Config, ConfigError
from labkit.data import digits_batch
from labkit.mesh import Topology
from labkit.models import create_model
from labkit.telemetry import read_events
from labkit.train import loop
from labkit.train.device_loop import StepPrograms, WindowClock, read_window, run_stretch
from labkit.train.step import create_train_state, make_train_step


@contextlib.contextmanager
def no_host_copies():
    """Refuse every device-to-host copy: ``jax.transfer_guard_device_to_host`` (blind on CPU, where arrays already
    live in host memory) plus a refusal in the one place a jax.Array becomes host data (``_value``:
    float(), bool(), np.asarray(), device_get() all go through it)."""
    from jax._src.array import ArrayImpl

    def refuse(self):
        raise AssertionError("a device-to-host copy between log points")

    original = ArrayImpl._value
    ArrayImpl._value = property(refuse)
    try:
        with jax.transfer_guard_device_to_host("disallow"):
            yield
    finally:
        ArrayImpl._value = original


def _setup(k=1):
    topo = Topology.build(shape=(2, 4), bn_group=2)
    model = create_model("resnet_tiny", num_classes=10, bn_axis_name=topo.bn_axes)
    state = jax.device_put(create_train_state(model, optax.sgd(0.1, momentum=0.9), (16, 16, 3), rng=3),
                           topo.replicated)
    programs = StepPrograms(make_train_step(model, topo, donate=False), k=k, replicated=topo.replicated)
    images, labels = digits_batch(64, 16)
    batches = [{"image": topo.shard_batch(np.roll(images, 8 * i, 0)), "label": topo.shard_batch(np.roll(labels, 8 * i, 0))}
               for i in range(3)]
    return topo, state, programs, batches


def test_k_steps_in_one_call_equal_k_single_steps_and_nothing_is_copied_back():
    _, state0, programs, batches = _setup(k=3)
    copy = jax.tree_util.tree_map(lambda x: x.copy(), state0)
    with no_host_copies():
        state_k, window_k, _, _ = run_stretch(programs, state0, programs.new_window(), iter(batches), 3)
    _, _, one_program, _ = _setup(k=1)
    with no_host_copies():
        state_1, window_1, _, _ = run_stretch(one_program, copy, one_program.new_window(), iter(batches), 3)
        with pytest.raises(AssertionError, match="device-to-host"):  # the guard is live: a read fails here
            float(window_1["loss"])
    assert set(programs.compiled) == {"k"} and set(one_program.compiled) == {"one"}
    assert read_window(window_k)["loss"] == pytest.approx(read_window(window_1)["loss"], rel=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(state_k.params), jax.tree_util.tree_leaves(state_1.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)  # fused differently
    assert int(state_k.step) == 3


def test_guard_covers_bn_running_statistics():
    _, state, programs, batches = _setup()
    state_copy = jax.tree_util.tree_map(lambda x: x.copy(), state)  # the program donates its input state
    _, window, _, _ = run_stretch(programs, state, programs.new_window(), iter(batches[:1]), 1)
    assert read_window(window)["finite"] is True
    state = state_copy
    leaves, tree = jax.tree_util.tree_flatten(state.batch_stats)
    leaves[0] = leaves[0].at[0].set(np.nan)  # only a running statistic is bad: the loss and parameters stay finite
    state = state.replace(batch_stats=jax.tree_util.tree_unflatten(tree, leaves))
    _, window, _, _ = run_stretch(programs, state, programs.new_window(), iter(batches[:1]), 1)
    got = read_window(window)
    assert np.isfinite(got["loss"]) and got["finite"] is False


def test_window_clock_leaves_compiling_windows_and_pauses_out():
    clock = WindowClock(before_images=100, before_seconds=1.0)
    clock.close(images=50, compiled=True)  # a compiling window counts for nothing steady
    assert (clock.images, clock.seconds) == (100, 1.0)
    clock.pause()
    clock.resume()
    seconds = clock.close(images=10, compiled=False)
    assert clock.images == 110 and clock.seconds == pytest.approx(1.0 + seconds)
    assert clock.images_per_s == pytest.approx(110 / (1.0 + seconds))


def test_steps_per_loop_is_validated():
    with pytest.raises(ConfigError, match=r"config\.steps_per_loop: 0 .*>= 1"):
        Config(steps_per_loop=0)
    with pytest.raises(ConfigError, match=r"config\.steps_per_loop: 8 exceeds log_every_steps \(4\).*allowed: 1\.\.4"):
        Config(log_every_steps=4, steps_per_loop=8)


TINY = Config(model="resnet_tiny", dataset="synthetic", num_classes=10, image_size=16, train_images=640,
              global_batch=64, epochs=2, warmup_epochs=0.5, target_accuracy=0.0, bn_stats_every_steps=8,
              collective_every_steps=8, shape="2x4", bn_group=2, allreduce="torus2d", log_every_steps=4,
              steps_per_loop=2)


def test_loop_reads_the_device_only_at_host_points(tmp_path, monkeypatch):
    """Every stretch of steps between host points runs under a device-to-host transfer guard."""
    real, stretches = loop.run_stretch, []

    def guarded(programs, state, window, batches, count, **kw):
        stretches.append(count)
        with no_host_copies():
            return real(programs, state, window, batches, count, **kw)

    monkeypatch.setattr(loop, "run_stretch", guarded)
    summary = loop.train_and_evaluate(TINY, tmp_path, log=None)
    assert summary["steps"] == 20 and sum(stretches) == 20
    events, _ = read_events(tmp_path)
    steps = [e for e in events if e["kind"] == "step"]
    # host points: log cadence 0, 4, 8, ...; the checkpoint at 10 (after step 9); the end (step 19)
    assert [e["step"] for e in steps] == [0, 4, 8, 9, 12, 16, 19]
    assert [e["steps"] for e in steps] == stretches == [1, 4, 4, 1, 3, 4, 3]
    assert all((e["images_per_s"] is None) == e["compile"] for e in steps)
    walls = [e["wall_s"] for e in steps]
    assert walls == sorted(walls) and walls[-1] <= summary["wall_time_s"]
    for key in ("images_per_s", "images_per_s_wall", "time_to_accuracy_s", "wall_time_s", "mfu", "mfu_reason"):
        assert key in summary
    assert summary["images_per_s"] > 0 and summary["images_per_s_wall"] == pytest.approx(
        20 * 64 / summary["wall_time_s"], rel=1e-6)
    assert summary["mfu"] is None and "cpu" in summary["mfu_reason"]
    assert summary["flops_per_step_per_device"] > 0
