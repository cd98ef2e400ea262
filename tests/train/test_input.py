"""labkit.train.input: resume reads from a saved tf.data iterator position, in constant time and exactly."""
import time

import numpy as np
import pytest

from labkit.config import Config
from labkit.mesh import Topology
from labkit.train.input import InputPositions, create_train_iterator, describe_data

# Real digits through the deterministic pipeline; one image per replica keeps 1,000 steps cheap to reach.
CONFIG = Config(model="resnet_tiny", dataset="digits", image_size=16, global_batch=8, crop_area_min=0.5,
                random_flip=False, shape="2x4", deterministic=True, prefetch=1)


def _host(batch):
    return {k: np.asarray(v).astype(np.float32) for k, v in batch.items()}


def _first_batch_after_resume(topo, info, directory, step):
    t0 = time.perf_counter()
    iterator = create_train_iterator(CONFIG, topo, info, start_step=step, positions=InputPositions(directory))
    try:
        batch = _host(next(iterator))
    finally:
        iterator.close()
    return batch, time.perf_counter() - t0


@pytest.mark.slow
def test_resume_cost_does_not_grow_with_the_step_and_batches_are_exact(tmp_path):
    topo, info = Topology.build(shape=(2, 4), bn_group=2), describe_data(CONFIG)
    directory = str(tmp_path / "positions")
    unbroken = create_train_iterator(CONFIG, topo, info, positions=InputPositions(
        directory, wanted=lambda p: p in (10, 1000)))
    expected = {}
    try:
        for step in range(1001):
            batch = next(unbroken)
            if step in (10, 1000):
                expected[step] = _host(batch)
    finally:
        unbroken.close()
    assert InputPositions(directory).at_or_before(999) == 10  # the producer saved exactly the wanted positions
    times = {10: [], 1000: []}
    for _ in range(2):  # interleaved, best of two: the machine is shared
        for step in (10, 1000):
            batch, seconds = _first_batch_after_resume(topo, info, directory, step)
            for key in ("image", "label"):
                np.testing.assert_array_equal(batch[key], expected[step][key])
            times[step].append(seconds)
    assert min(times[1000]) < 2 * min(times[10]), times


def test_resume_between_saved_positions_reads_only_the_batches_since_the_last_one(tmp_path):
    topo, info = Topology.build(shape=(2, 4), bn_group=2), describe_data(CONFIG)
    directory = str(tmp_path / "positions")
    unbroken = create_train_iterator(CONFIG, topo, info, positions=InputPositions(directory, wanted=lambda p: p == 4))
    try:
        expected = [_host(next(unbroken)) for _ in range(7)]
    finally:
        unbroken.close()
    resumed = create_train_iterator(CONFIG, topo, info, start_step=6, positions=InputPositions(directory))
    try:
        batch = _host(next(resumed))
    finally:
        resumed.close()
    np.testing.assert_array_equal(batch["image"], expected[6]["image"])
    np.testing.assert_array_equal(batch["label"], expected[6]["label"])


class _SlowSource:
    """A host input that takes ``delay`` seconds per batch (a slow disk or decoder) and counts what it made."""

    skip_counter = None

    def __init__(self, batch: int, delay: float):
        self.batch, self.delay, self.produced = batch, delay, 0

    def __iter__(self):
        while True:
            time.sleep(self.delay)
            self.produced += 1
            yield {"image": np.full((self.batch, 2, 2, 3), self.produced, np.float32),
                   "label": np.zeros((self.batch,), np.int32)}


def test_k_steps_per_host_call_never_wait_on_a_queue_shallower_than_k(monkeypatch):
    """steps_per_loop K = 6 with the default prefetch depth 2. At a host point the device has just finished its
    window, and a producer that keeps pace has filled the queue: the next K-step call must find all K batches
    ready (the queue's depth follows K), not 2 ready and K - 2 waits while the device idles."""
    import jax
    import jax.numpy as jnp
    from labkit import data, telemetry
    from labkit.train.device_loop import StepPrograms, read_window, run_stretch
    from labkit.train.input import DataInfo
    k = 6
    config = CONFIG.replace(steps_per_loop=k, log_every_steps=k, prefetch=2)
    source = _SlowSource(config.global_batch, delay=0.02)
    monkeypatch.setattr(data, "train_dataset", lambda *args, **kwargs: source)
    topo = Topology.build(shape=(2, 4), bn_group=2)
    stream = telemetry.EventStream()

    def step(state, images, labels):  # a trivial device step: the test is about the queue, not the model
        return state + images.mean(), {"finite": jnp.isfinite(state), "loss": state, "accuracy": state}, None
    programs = StepPrograms(step, k=k, replicated=topo.replicated)
    state = jax.device_put(jnp.zeros((), jnp.float32), topo.replicated)
    iterator = create_train_iterator(config, topo, DataInfo(10, 800, 16, "digits"), stream=stream)
    depths = []  # the queue depth the consumer found at each pull (what input_queue events report)

    def tap(batches):
        for batch in batches:
            depths.append(iterator.last["depth"])
            yield batch
    tapped = tap(iterator)
    try:
        assert iterator.size >= k
        for _ in range(3):  # three host windows
            deadline = time.monotonic() + 60
            while iterator._queue.qsize() < iterator.size and time.monotonic() < deadline:
                time.sleep(0.01)  # the device runs the window; the producer keeps pace and fills the queue
            state, window, _, _ = run_stretch(programs, state, programs.new_window(), tapped, k)
            read_window(window)  # the host point: the device is idle from here until the next call
    finally:
        iterator.close()
    assert len(depths) == 3 * k
    assert [e["capacity"] for e in stream.events("input_queue")] == [iterator.size] * 3  # one event per window
    assert min(depths) >= 1 and iterator.input_bound_steps == 0, depths  # no pull found the queue empty
    assert depths[:k] == list(range(iterator.size, iterator.size - k, -1))  # all K were waiting at the call
    assert float(state) == pytest.approx(sum(range(1, 3 * k + 1)))  # every batch once, in order


def _digits_times(directory, times: int) -> str:
    """A TFRecord data set holding the digits training records ``times`` over (a cache ``times`` as large)."""
    import tensorflow as tf
    from labkit.data import tfrecords
    from labkit.data.pipeline import resolve_files
    records = [r.numpy() for r in tf.data.TFRecordDataset(resolve_files("digits", "train")[0])]
    tfrecords.write_shards(directory, "train", records * times, 8, num_classes=10)
    return str(directory)


def _bytes_under(directory) -> int:
    import os
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(directory) for f in files)


def test_saved_input_position_does_not_grow_with_the_cache_and_resumes_exactly(tmp_path):
    """The default input (deterministic, records cached in RAM) saves a position of one number, whatever the cache
    holds: 1x and 4x the digits records. A tf.data iterator checkpoint of the buffered pipeline (measured beside
    it) holds the cache and the shuffle buffer and grows with them. Resuming from the small position is exact."""
    import tensorflow as tf
    from labkit.data import train_dataset
    topo = Topology.build(shape=(2, 4), bn_group=2)
    saved, explicit = {}, {}
    for times in (1, 4):
        config = CONFIG.replace(dataset="tfrecords", data_dir=_digits_times(tmp_path / f"data{times}", times),
                                num_classes=10)
        info = describe_data(config)
        assert info.train_images == 1497 * times
        directory = tmp_path / f"positions{times}"
        unbroken = create_train_iterator(config, topo, info, positions=InputPositions(
            str(directory), wanted=lambda p: p == 5))
        try:
            expected = [_host(next(unbroken)) for _ in range(7)]
        finally:
            unbroken.close()
        saved[times] = _bytes_under(directory)
        resumed = create_train_iterator(config, topo, info, start_step=5, positions=InputPositions(str(directory)))
        try:
            for step in (5, 6):  # the saved position's own batch, then the next: exactly the unbroken ones
                batch = _host(next(resumed))
                for key in ("image", "label"):
                    np.testing.assert_array_equal(batch[key], expected[step][key])
        finally:
            resumed.close()
        # What the buffered pipeline's iterator checkpoint holds at the same point (after the cache filled).
        ds = train_dataset(config.data_dir, 64, image_size=16, seed=0, deterministic=True, process_index=0,
                           process_count=1, shuffle_buffer=256)
        options = tf.data.Options()
        options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
        iterator = ds.with_options(options).as_numpy_iterator()
        for _ in range(1497 * times // 64 + 5):  # past the first epoch: the cache is complete
            next(iterator)
        tf.train.Checkpoint(iterator=iterator).write(str(tmp_path / f"explicit{times}" / "ckpt"))
        explicit[times] = _bytes_under(tmp_path / f"explicit{times}")
    assert saved[1] == saved[4] and saved[1] < 200, saved  # one JSON number per host, whatever the cache
    assert explicit[4] > 3 * explicit[1] > 1_000_000, explicit  # what it replaces: the cache, and growing
