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
