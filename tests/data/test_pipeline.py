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
        assert ds.num_records == per_host[h] and not hasattr(ds, "num_examples")  # records, named so
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


# --- multi-host input without file sharding, host-dependent augmentation, counting once, TFDS ---------------

def test_eval_without_file_sharding_reads_every_image_once_across_hosts(tiny):
    off = pipeline.Switches(shard_files=False)  # interleave on (eval turns shuffling off itself)
    seen = []
    for h in range(2):
        ds, batches = _eval_batches(tiny, 3, h, 2, switches=off)
        assert ds.num_records == sum(len(range(h, c, 2)) for c in VALIDATION_FILES)
        seen += [lbl for b in batches for lbl in b["label"][b["mask"]].tolist()]
    assert sorted(seen) == list(range(sum(VALIDATION_FILES)))


def test_train_hosts_never_overlap_without_file_sharding_seed_or_determinism(tiny):
    off = pipeline.Switches(shard_files=False)  # shuffle and interleave on, no seed, free order
    sets = []
    for h in range(2):
        ds = pipeline.train_dataset(tiny, 1, image_size=8, num_epochs=1, switches=off, process_index=h,
                                    process_count=2)
        sets.append([int(b["label"][0]) for b in ds.as_numpy_iterator()])
    assert not set(sets[0]) & set(sets[1]) and len(sets[0]) + len(sets[1]) == sum(TRAIN_FILES)
    assert set(sets[0]) | set(sets[1]) == set(range(sum(TRAIN_FILES)))


def test_augmentation_seeds_include_the_host(tmp_path):
    """The same image at the same stream position on two hosts gets different crops and flips."""
    import tensorflow as tf
    from labkit.data import tfrecords
    from tests.data.conftest import jpeg
    same = tfrecords.encode_example(jpeg(image_for(5, 48, 64)), 0, height=48, width=64)
    for k in range(2):
        with tf.io.TFRecordWriter(str(tmp_path / tfrecords.shard_name("train", k, 2))) as w:
            for _ in range(4):
                w.write(same)
    first = []
    for h in range(2):
        ds = pipeline.train_dataset(tmp_path, 4, image_size=16, num_classes=2, seed=3, deterministic=True,
                                    switches=pipeline.Switches(shuffle=False, bfloat16=False), process_index=h,
                                    process_count=2)
        first.append(next(ds.as_numpy_iterator())["image"])
    assert np.abs(first[0] - first[1]).max(axis=(1, 2, 3)).min() > 1.0  # every position differs


def test_a_second_pass_over_one_eval_dataset_does_not_count_again(corrupt):
    data, good, expected_skips = corrupt
    for switches in (pipeline.Switches(), pipeline.Switches(cache=False)):
        ds = pipeline.eval_dataset(data, 4, image_size=16, num_classes=NUM_CLASSES, switches=switches,
                                   process_index=0, process_count=1, skip_counter=pipeline.SkipCounter())
        for _ in range(2):
            seen = [lbl for b in ds.as_numpy_iterator() for lbl in b["label"][b["mask"]].tolist()]
            assert sorted(seen) == good
        assert ds.skip_counter.value == expected_skips


def _tfds_example(label):
    import tensorflow as tf
    from tests.data.conftest import jpeg
    feat = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg(image_for(label))])),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}
    return tf.train.Example(features=tf.train.Features(feature=feat)).SerializeToString()


def _fake_tfds(root, version, lengths, first_label, recorded=None):
    """``root/fakenet/VERSION/`` as TFDS prepares it: shards + dataset_info.json with the split's shardLengths."""
    import json
    import tensorflow as tf
    d = root / "fakenet" / version
    d.mkdir(parents=True)
    label = first_label
    for i, n in enumerate(lengths):
        with tf.io.TFRecordWriter(str(d / f"fakenet-validation.tfrecord-{i:05d}-of-{len(lengths):05d}")) as w:
            for _ in range(n):
                w.write(_tfds_example(label))
                label += 1
    info = {"name": "fakenet", "version": version,
            "splits": [{"name": "validation", "shardLengths": [str(n) for n in (recorded or lengths)]}]}
    (d / "dataset_info.json").write_text(json.dumps(info))
    return d


def test_tfds_reads_one_prepared_version_and_takes_sizes_from_its_metadata(tmp_path, monkeypatch):
    from labkit.data import tfrecords
    _fake_tfds(tmp_path, "1.0.0", [2, 2], first_label=100)   # an older preparation: must not be read
    newest = _fake_tfds(tmp_path, "1.10.0", [3, 2], first_label=0)  # 1.10 > 1.9 > 1.0: versions, not strings
    _fake_tfds(tmp_path, "1.9.0", [1], first_label=200)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    files, schema = pipeline.resolve_files("tfds:fakenet", "validation")
    assert [f.rsplit("/", 1)[0] for f in files] == [str(newest)] * 2
    ds, batches = _eval_batches("tfds:fakenet", 4, num_classes=300)
    assert sorted(lbl for b in batches for lbl in b["label"][b["mask"]].tolist()) == list(range(5))
    files9, _ = pipeline.resolve_files("tfds:fakenet:1.9.0", "validation")
    assert len(files9) == 1 and "/1.9.0/" in files9[0]
    with pytest.raises(ValueError, match=r"version '2.0.0' is not prepared .* allowed values: \['1.0.0'"):
        pipeline.resolve_files("tfds:fakenet:2.0.0", "validation")
    # Sizes come from dataset_info.json, not from reading the records (which a stated count would contradict).
    meta = _fake_tfds(tmp_path / "other", "1.0.0", [3, 2], first_label=0, recorded=[30, 20])
    assert tfrecords.count_records(sorted(str(p) for p in meta.glob("*.tfrecord-*"))) == [30, 20]


def test_random_access_stream_is_each_epoch_a_permutation_and_a_function_of_position():
    """``train_dataset(random_access=True)``'s record stream: every record exactly once per epoch (in a new order
    each epoch), and started at any position it continues exactly as the stream from 0 does there."""
    import tensorflow as tf
    from labkit.data import pipeline
    files = pipeline.resolve_files("digits", "train")[0]
    raw = [r.numpy() for r in tf.data.TFRecordDataset(files)]  # the records, read independently
    n = len(raw)

    def stream(start, epochs=2):
        ds = pipeline._random_access_records(files, pipeline.Switches(), pipeline.SkipCounter(), 0, 1,
                                             cycle_length=8, seed=3, num_epochs=epochs, start=start)
        return [(bytes(r), int(i)) for r, i in ds.as_numpy_iterator()]
    got = stream(0)
    assert [i for _, i in got] == list(range(2 * n))
    first, second = [r for r, _ in got[:n]], [r for r, _ in got[n:]]
    assert sorted(first) == sorted(raw) == sorted(second)  # a permutation of the records, each epoch
    assert first != raw and first != second  # shuffled, and differently in each epoch
    assert stream(n - 5)[:10] == got[n - 5:n + 5]  # from a position: the same elements, across the epoch edge


def test_random_access_refuses_records_larger_than_half_the_memory(monkeypatch):
    """The random-access stream holds this host's records in RAM: a data set over half the memory is refused
    before any record is read, with what to change (a 1 MiB "machine" stands in for a small host)."""
    from labkit import storage
    from labkit.data import pipeline
    files = pipeline.resolve_files("digits", "train")[0]
    size = sum(storage.size(f) for f in files)
    monkeypatch.setattr(pipeline, "_physical_memory", lambda: size)  # the records are exactly all of it
    with pytest.raises(ValueError, match=r"holds this host's records in RAM: .* GiB .*Allowed: cache=False"):
        pipeline._random_access_records(files, pipeline.Switches(), pipeline.SkipCounter(), 0, 1, cycle_length=8,
                                        seed=3, num_epochs=1, start=0)
    monkeypatch.setattr(pipeline, "_physical_memory", lambda: 2 * size + 1)  # just under half: read
    assert pipeline._random_access_records(files, pipeline.Switches(), pipeline.SkipCounter(), 0, 1, cycle_length=8,
                                           seed=3, num_epochs=1, start=0).cardinality() > 0


def test_memory_is_a_containers_limit_where_it_is_lower(monkeypatch, tmp_path):
    """cgroup v2's memory.max holds a byte count or "max" (no limit), v1's memory.limit_in_bytes a byte count
    (Linux Documentation/admin-guide/cgroup-v2.rst and cgroup-v1/memory.rst): the lowest of them and the machine's
    RAM is what this process may use."""
    import os
    from labkit.data import pipeline
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    monkeypatch.setattr(pipeline, "_CGROUP_LIMITS", (str(v2), str(v1), str(tmp_path / "absent")))
    v2.write_text("max\n")
    v1.write_text(f"{ram * 4}\n")
    assert pipeline._physical_memory() == ram  # no limit, and one above the machine's RAM
    v2.write_text("1073741824\n")
    assert pipeline._physical_memory() == min(ram, 1073741824)
