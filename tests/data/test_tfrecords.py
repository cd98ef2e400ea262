"""labkit.data.tfrecords: the ImageNet schema round trip, 1-based labels, file listing errors."""
import numpy as np
import pytest

from labkit.data import pipeline, tfrecords
from tests.data.conftest import NUM_CLASSES, TRAIN_FILES, VALIDATION_FILES, image_for, jpeg


def test_schema_round_trip_stores_one_based_labels(tmp_path):
    image = jpeg(image_for(3))
    rec = tfrecords.encode_example(image, 7, height=24, width=32, synset="n01440764", text="tench",
                                   filename="a.jpg")
    counts = tfrecords.write_shards(tmp_path, "train", [rec, rec, rec], 2, num_classes=10)
    assert counts == {"train-00000-of-00002": 2, "train-00001-of-00002": 1}
    rows = tfrecords.read_examples(tfrecords.list_files(tmp_path, "train"))
    assert len(rows) == 3
    row = rows[0]
    assert row["image/class/label"] == 8  # 0-based 7 stored 1-based, as build_imagenet_data.py does
    assert row["image/encoded"] == image
    assert (row["image/height"], row["image/width"], row["image/channels"]) == (24, 32, 3)
    assert row["image/class/synset"] == b"n01440764" and row["image/format"] == b"JPEG"
    assert tfrecords.read_info(tmp_path) == {"num_classes": 10, "records": counts}


def test_label_offset_one_reads_back_zero_based(tmp_path):
    recs = [tfrecords.encode_example(jpeg(image_for(i)), i, height=24, width=32) for i in range(4)]
    tfrecords.write_shards(tmp_path, "validation", recs, 1, num_classes=4)
    ds = pipeline.eval_dataset(tmp_path, 4, image_size=8, label_offset=1, process_index=0, process_count=1)
    batch = next(ds.as_numpy_iterator())
    assert sorted(batch["label"].tolist()) == [0, 1, 2, 3]
    ds0 = pipeline.eval_dataset(tmp_path, 4, image_size=8, label_offset=0, num_classes=5,
                                process_index=0, process_count=1)
    assert sorted(next(ds0.as_numpy_iterator())["label"].tolist()) == [1, 2, 3, 4]


def test_list_files_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        tfrecords.list_files(tmp_path / "nope", "train")
    with pytest.raises(FileNotFoundError, match=r"train-\*"):
        tfrecords.list_files(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match=r"zzz-\*-of-\*"):
        pipeline.train_dataset(str(tmp_path / "zzz-*-of-*"), 2, process_index=0, process_count=1)


def test_count_records_with_and_without_info(tiny, tmp_path):
    files = tfrecords.list_files(tiny, "validation")
    assert tfrecords.count_records(files) == list(VALIDATION_FILES)
    for f in files:  # the same files without labkit-info.json are counted by reading them
        (tmp_path / f.split("/")[-1]).write_bytes(open(f, "rb").read())
    assert tfrecords.count_records(tfrecords.list_files(tmp_path, "validation")) == list(VALIDATION_FILES)
    assert len(tfrecords.list_files(tiny, "train")) == len(TRAIN_FILES)
    assert tfrecords.read_info(tiny)["num_classes"] == NUM_CLASSES
