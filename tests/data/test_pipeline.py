"""labkit.data.pipeline: batch shapes/dtypes, eval exactly-once over hosts, host sharding, bad input."""
import dataclasses

import ml_dtypes
import numpy as np
import pytest

from labkit.data import pipeline
from tests.data.conftest import NUM_CLASSES, TRAIN_FILES, VALIDATION_FILES, image_for


def _eval_batches(data, batch, host=0, hosts=1, **kw):
    ds = pipeline.eval_dataset(data, batch, image_size=16, process_index=host, process_count=hosts, **kw)
    return ds, list(ds.as_numpy_iterator())


def test_train_batch_shapes_and_dtypes(tiny):
    ds = pipeline.train_dataset(tiny, 8, image_size=20, process_index=0, process_count=1)
    batch = next(ds.as_numpy_iterator())
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (8, 20, 20, 3) and batch["image"].dtype == ml_dtypes.bfloat16
    assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
    assert 0 <= batch["label"].min() and batch["label"].max() < sum(TRAIN_FILES)
    pixels = batch["image"].astype(np.float32)
    assert pixels.min() > -20 and pixels.max() < 275 and pixels.std() > 5  # 0..255 scale (bicubic overshoot)
    ds32 = pipeline.train_dataset(tiny, 4, image_size=12, switches=pipeline.Switches(bfloat16=False),
                                  process_index=0, process_count=1)
    assert next(ds32.as_numpy_iterator())["image"].dtype == np.float32


@pytest.mark.parametrize("name,switches", pipeline.LADDER, ids=[n for n, _ in pipeline.LADDER])
def test_every_ladder_rung_yields_batches(tiny, name, switches):
    ds = pipeline.train_dataset(tiny, 4, image_size=16, switches=switches, num_epochs=1,
                                process_index=0, process_count=1)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == sum(TRAIN_FILES) // 4  # drop_remainder: static shapes
    labels = np.concatenate([b["label"] for b in batches])
    assert len(set(labels.tolist())) == len(labels)  # one epoch: each image at most once


def test_ladder_starts_naive_and_ends_at_the_defaults():
    names = [n for n, _ in pipeline.LADDER]
    assert names[0] == "naive" and pipeline.LADDER[-1][1] == pipeline.Switches()
    naive = pipeline.LADDER[0][1]
    assert not (naive.parallel_map or naive.interleave or naive.fused_crop or naive.prefetch or naive.cache)
    for (_, prev), (name, cur) in zip(pipeline.LADDER, pipeline.LADDER[1:]):
        assert cur.added(prev) == [name[2:]]  # exactly one optimization per rung


def test_eval_center_crop_matches_numpy(tiny):
    # 24x32 images: crop side int(0.875 * 24) = 21 at (2, 6); resizing 21 -> 21 keeps pixels exactly.
    from PIL import Image
    import io
    ds = pipeline.eval_dataset(tiny, 7, image_size=21, switches=pipeline.Switches(bfloat16=False),
                               process_index=0, process_count=1)
    batch = next(ds.as_numpy_iterator())
    from labkit.data import tfrecords
    first = tfrecords.read_examples(tfrecords.list_files(tiny, "validation")[0])[0]
    expected = np.asarray(Image.open(io.BytesIO(first["image/encoded"])).convert("RGB"), np.float32)[2:23, 6:27]
    assert batch["label"][0] == first["image/class/label"] - 1
    assert np.abs(batch["image"][0] - expected).mean() < 2.0  # two JPEG decoders differ by rounding only
    unfused = pipeline.eval_dataset(tiny, 7, image_size=21, process_index=0, process_count=1,
                                    switches=pipeline.Switches(bfloat16=False, fused_crop=False))
    assert np.abs(next(unfused.as_numpy_iterator())["image"][0] - batch["image"][0]).mean() < 2.0


def test_eval_is_deterministic(tiny):
    _, a = _eval_batches(tiny, 4)
    _, b = _eval_batches(tiny, 4)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        for k in ("image", "label", "mask"):
            np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("hosts,batch", [(1, 4), (1, 15), (2, 4), (2, 3), (3, 2), (4, 4)])
def test_every_eval_image_counts_exactly_once(tiny, hosts, batch):
    total = sum(VALIDATION_FILES)
    per_host = [sum(VALIDATION_FILES[h::hosts]) for h in range(hosts)]
    expected_batches = -(-max(per_host) // batch)
    seen = []
    for h in range(hosts):
        ds, batches = _eval_batches(tiny, batch, h, hosts)
        assert len(batches) == ds.num_batches == expected_batches  # every host: same number of batches
        assert ds.num_examples == per_host[h]
        for b in batches:
            assert b["mask"].dtype == bool and b["image"].shape == (batch, 16, 16, 3)
            seen += b["label"][b["mask"]].tolist()
    assert sorted(seen) == list(range(total))


def test_train_shards_disjoint_across_hosts(tiny):
    per_host = []
    for h in range(2):
        ds = pipeline.train_dataset(tiny, 1, image_size=8, num_epochs=1, process_index=h, process_count=2)
        per_host.append({int(b["label"][0]) for b in ds.as_numpy_iterator()})
    assert not per_host[0] & per_host[1]
    assert per_host[0] | per_host[1] == set(range(sum(TRAIN_FILES)))
    assert len(per_host[0]) == TRAIN_FILES[0] + TRAIN_FILES[2] + TRAIN_FILES[4]  # files 0, 2, 4
    # shard_files off: records, not files, are split; still disjoint and complete
    off = pipeline.Switches(shard_files=False, interleave=False, shuffle=False)
    sets = [{int(b["label"][0]) for b in pipeline.train_dataset(
        tiny, 1, image_size=8, num_epochs=1, switches=off, process_index=h, process_count=2).as_numpy_iterator()}
        for h in range(2)]
    assert not sets[0] & sets[1] and sets[0] | sets[1] == set(range(sum(TRAIN_FILES)))


def test_train_refuses_fewer_files_than_hosts(tiny):
    with pytest.raises(ValueError, match="5 files cannot be split over 8 hosts"):
        pipeline.train_dataset(tiny, 2, process_index=0, process_count=8)


@pytest.mark.parametrize("switches", [pipeline.Switches(), pipeline.LADDER[0][1]], ids=["all_on", "naive"])
def test_corrupt_records_are_skipped_and_counted_exactly(corrupt, switches):
    data, good, expected_skips = corrupt
    ds = pipeline.eval_dataset(data, 4, image_size=16, num_classes=NUM_CLASSES, switches=switches,
                               process_index=0, process_count=1)
    seen = [l for b in ds.as_numpy_iterator() for l in b["label"][b["mask"]].tolist()]
    assert sorted(seen) == good  # the truncated file's last record (a second label 0) is lost and counted
    assert ds.skip_counter.value == expected_skips
    tr = pipeline.train_dataset(data, 1, image_size=16, num_classes=NUM_CLASSES, num_epochs=2,
                                switches=dataclasses.replace(switches, cache=False),
                                process_index=0, process_count=1)
    assert sum(1 for _ in tr.as_numpy_iterator()) == 2 * len(good)
    assert tr.skip_counter.value == 2 * expected_skips  # counted every time a bad record is read


def test_label_out_of_range_names_the_value(tiny):
    import tensorflow as tf
    ds = pipeline.eval_dataset(tiny, 4, image_size=8, num_classes=5, process_index=0, process_count=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"label outside \[0, 5\)") as err:
        list(ds.as_numpy_iterator())
    import re
    assert int(re.search(r"label =\] \[(-?\d+)\]", str(err.value)).group(1)) >= 5  # the offending value
    ds = pipeline.eval_dataset(tiny, 4, image_size=8, label_offset=2, process_index=0, process_count=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"label_offset=2: label =(.|\n)*-1"):
        list(ds.as_numpy_iterator())


def test_unknown_num_classes_and_bad_host_are_clear_errors(tmp_path, tiny):
    import shutil
    for f in tiny.glob("validation-*"):
        shutil.copy(f, tmp_path / f.name)  # no labkit-info.json: the class count is unknown
    with pytest.raises(ValueError, match="num_classes: None is unknown"):
        pipeline.eval_dataset(tmp_path, 4, process_index=0, process_count=1)
    with pytest.raises(ValueError, match=r"process_index: 2 is outside \[0, 2\)"):
        pipeline.eval_dataset(tiny, 4, process_index=2, process_count=2)


def _batches(data, n, **kw):
    it = pipeline.train_dataset(data, 4, image_size=16, num_classes=NUM_CLASSES, **kw).as_numpy_iterator()
    return [next(it) for _ in range(n)]


def test_seeded_deterministic_stream_depends_on_the_seed_alone(tiny):
    """What exact resume relies on: same seed, same batches; skipping k batches gives the tail."""
    a = _batches(tiny, 5, seed=7, deterministic=True)
    b = _batches(tiny, 5, seed=7, deterministic=True)
    tail = pipeline.train_dataset(tiny, 4, image_size=16, num_classes=NUM_CLASSES, seed=7,
                                  deterministic=True).skip(2).as_numpy_iterator()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    for x in a[2:]:
        np.testing.assert_array_equal(x["image"], next(tail)["image"])
    other = _batches(tiny, 1, seed=8, deterministic=True)
    assert not np.array_equal(a[0]["image"], other[0]["image"])  # crops/order really depend on the seed
