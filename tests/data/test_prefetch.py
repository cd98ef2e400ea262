"""labkit.data.prefetch: global device batches, queue telemetry, clean shutdown, producer errors, normalize."""
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from labkit import telemetry
from labkit.data import pipeline
from labkit.data.prefetch import MEAN_RGB, STDDEV_RGB, DevicePrefetcher, normalize
from labkit.mesh import Topology


@pytest.fixture(scope="module")
def topo():
    return Topology.build(shape=(2, 4), bn_group=2)


def _batches(n, size=8, fail_at=None):
    for i in range(n):
        if i == fail_at:
            raise ValueError(f"boom at batch {i}")
        yield {"image": np.full((size, 4, 4, 3), i, np.float32), "label": np.arange(size, dtype=np.int32) + i}


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "labkit-prefetch" and t.is_alive()]


def test_batches_arrive_as_global_sharded_arrays_with_telemetry(topo):
    stream = telemetry.EventStream(host=0)
    with DevicePrefetcher(_batches(5), topo, size=2, stream=stream) as it:
        got = list(it)
    assert len(got) == 5
    for i, b in enumerate(got):
        assert isinstance(b["image"], jax.Array) and b["image"].sharding == topo.batch_sharding
        np.testing.assert_array_equal(np.asarray(b["label"]), np.arange(8) + i)
        assert float(b["image"][0, 0, 0, 0]) == i
    events = stream.events("input_queue")
    assert [e["step"] for e in events] == [0, 1, 2, 3, 4]
    for e in events:
        assert e["capacity"] == 2 and 0 <= e["depth"] <= 2 and e["wait_s"] >= 0 and e["skipped"] == 0
        assert e["input_bound"] == (e["depth"] == 0) and e["images_per_s_out"] >= 0
    assert it.summary()["images"] == 40 and it.summary()["steps"] == 5


def test_producer_error_is_raised_in_the_consumer(topo):
    it = DevicePrefetcher(_batches(10, fail_at=2), topo, stream=telemetry.EventStream(host=0))
    assert float(next(it)["image"][0, 0, 0, 0]) == 0
    assert float(next(it)["image"][0, 0, 0, 0]) == 1
    with pytest.raises(ValueError, match="boom at batch 2"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)
    it._thread.join(5)
    assert not it._thread.is_alive()


def test_close_stops_an_endless_producer(topo):
    def endless():
        i = 0
        while True:
            yield {"image": np.zeros((8, 2, 2, 3), np.float32) + i}
            i += 1
    before = len(_prefetch_threads())
    with DevicePrefetcher(endless(), topo, size=3, stream=telemetry.EventStream(host=0)) as it:
        next(it)
        deadline = time.monotonic() + 5
        while it._queue.qsize() < 3 and time.monotonic() < deadline:
            time.sleep(0.01)  # let the producer block on a full queue
    assert not it._thread.is_alive()
    assert len(_prefetch_threads()) == before
    with pytest.raises(StopIteration):
        next(it)


def test_skip_count_from_the_pipeline_reaches_telemetry(corrupt, topo):
    data, good, expected = corrupt
    ds = pipeline.eval_dataset(data, 8, image_size=8, num_classes=64, process_index=0, process_count=1)
    stream = telemetry.EventStream(host=0)
    with DevicePrefetcher(ds, topo, stream=stream) as it:
        batches = list(it)
    assert it.skipped == expected and it.summary()["skipped"] == expected
    assert stream.events("input_queue")[-1]["skipped"] == expected
    assert batches[0]["image"].dtype == jnp.bfloat16 and batches[0]["mask"].dtype == jnp.bool_
    assert int(sum(np.asarray(b["mask"]).sum() for b in batches)) == len(good)


def test_indivisible_host_batch_is_a_clear_error(topo):
    it = DevicePrefetcher(_batches(2, size=6), topo, stream=telemetry.EventStream(host=0))
    with pytest.raises(ValueError, match="divisible by the 8 replicas"):
        next(it)


def test_normalize_matches_numpy():
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 3, 3)).astype(np.float32)
    expected = (x - np.array(MEAN_RGB, np.float32)) / np.array(STDDEV_RGB, np.float32)
    got = jax.jit(normalize)(jnp.asarray(x, jnp.bfloat16))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), expected, atol=0.05)  # bf16 input: ~3 significant digits
