"""labkit.data.convert: class folders -> ImageNet TFRecords; non-JPEG/odd JPEGs converted and reported."""
import argparse

import numpy as np
import pytest

from labkit.data import convert, pipeline, tfrecords
from tests.data.conftest import image_for, jpeg


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "src"
    for c in ("cat", "dog"):
        (src / c).mkdir(parents=True)
        for i in range(4):
            (src / c / f"{i}.jpg").write_bytes(jpeg(image_for(i)))
    (src / "cat" / "gray.jpg").write_bytes(jpeg(image_for(9), mode="L"))
    (src / "cat" / "cmyk.jpg").write_bytes(jpeg(image_for(8), mode="CMYK"))
    (src / "dog" / "pic.png").write_bytes(jpeg(image_for(7), fmt="PNG"))
    (src / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff this is not an image")
    return src


def test_convert_writes_shards_and_reports(folder, tmp_path, capsys):
    out = tmp_path / "out"
    parser = argparse.ArgumentParser()
    convert.add_arguments(parser)
    rc = convert.run(parser.parse_args([str(folder), str(out), "--validation-fraction", "0.25",
                                        "--train-shards", "3", "--validation-shards", "2"]))
    text = capsys.readouterr().out
    assert rc == 1  # something was unreadable: reported and signalled
    assert "broken.jpg" in text and "JPEG L" in text and "JPEG CMYK" in text and "PNG RGB" in text
    assert (out / "classes.txt").read_text() == "0\tcat\n1\tdog\n"
    train = tfrecords.read_examples(tfrecords.list_files(out, "train"))
    val = tfrecords.read_examples(tfrecords.list_files(out, "validation"))
    assert len(tfrecords.list_files(out, "train")) == 3
    assert len(train) + len(val) == 11  # 12 files, 1 unreadable
    labels = sorted(r["image/class/label"] for r in train + val)
    assert labels == [1] * 6 + [2] * 5  # 1-based, ImageNet style
    assert all(r["image/encoded"][:3] == b"\xff\xd8\xff" for r in train + val)  # every record is a JPEG
    ds = pipeline.eval_dataset(out, 2, image_size=8, process_index=0, process_count=1)
    masks = [b["mask"] for b in ds.as_numpy_iterator()]
    assert int(np.concatenate(masks).sum()) == len(val) and ds.skip_counter.value == 0


def test_convert_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        convert.convert_image_folder(tmp_path / "nowhere", tmp_path / "out")


def test_convert_names_empty_files_reports_empty_classes_and_says_why_it_fails(tmp_path, capsys):
    src = tmp_path / "src"
    for c in ("ant", "bee"):
        (src / c).mkdir(parents=True)
    (src / "empty_class").mkdir()
    (src / "ant" / "a.jpg").write_bytes(jpeg(image_for(1)))
    (src / "ant" / "zero.jpg").write_bytes(b"")
    (src / "bee" / "b.jpg").write_bytes(jpeg(image_for(2)))
    (src / "bee" / "junk.png").write_bytes(b"not an image at all")
    out = tmp_path / "out"
    parser = argparse.ArgumentParser()
    convert.add_arguments(parser)
    rc = convert.run(parser.parse_args([str(src), str(out), "--validation-fraction", "0", "--train-shards", "8"]))
    captured = capsys.readouterr()
    assert rc == 1
    assert f"{src / 'ant' / 'zero.jpg'} (empty file (0 bytes))" in captured.out
    assert "junk.png (not an image Pillow can read (19 bytes))" in captured.out
    assert "object at 0x" not in captured.out + captured.err  # no object reprs
    assert f"empty class folder, not a class: {src / 'empty_class'}" in captured.out
    assert "exit status 1: 2 file(s) could not be converted" in captured.err
    assert (out / "classes.txt").read_text() == "0\tant\n1\tbee\n"
    shards = tfrecords.list_files(out, "train")
    assert len(shards) == 2  # two readable images: two shards, chosen after dropping the bad files
    assert all(len(tfrecords.read_examples([f])) == 1 for f in shards)  # no 0-record shard


def test_converted_labels_are_read_right_by_default(folder, tmp_path):
    from labkit.config import Config
    from labkit.train.input import _label_offset
    out = tmp_path / "out"
    convert.convert_image_folder(folder, out, validation_fraction=0.0, train_shards=2)
    assert tfrecords.read_info(out)["label_offset"] == 1  # the data set's own metadata says 1-based
    config = Config(dataset="tfrecords", data_dir=str(out))
    assert config.label_offset == -1 and _label_offset(config) is None  # one default: detect from the data
    ds = pipeline.eval_dataset(out, 4, image_size=8, split="train", process_index=0, process_count=1)
    labels = np.concatenate([b["label"][b["mask"]] for b in ds.as_numpy_iterator()])
    assert sorted(labels.tolist()) == [0] * 6 + [1] * 5  # cat = 0, dog = 1 (12 files, 1 unreadable)
    assert _label_offset(config.replace(label_offset=0)) == 0  # an explicit value still wins
