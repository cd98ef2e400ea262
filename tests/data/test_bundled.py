"""labkit.data.bundled: digits and photos generated offline from scikit-learn / scikit-image images."""
import numpy as np
import pytest

from labkit.data import bundled, pipeline, tfrecords


def test_digits_has_the_fixed_split_and_every_real_label(tmp_path, monkeypatch):
    from sklearn.datasets import load_digits
    monkeypatch.setenv("LABKIT_DATA_DIR", str(tmp_path))
    path = bundled.prepare("digits")
    assert path == tmp_path / "digits"
    train = tfrecords.read_examples(tfrecords.list_files(path, "train"))
    val = tfrecords.read_examples(tfrecords.list_files(path, "validation"))
    assert (len(train), len(val)) == (1497, 300)
    target = load_digits().target
    labels = sorted(r["image/class/label"] - 1 for r in train + val)
    assert labels == sorted(target.tolist())
    order = np.random.default_rng(0).permutation(len(target))
    assert sorted(r["image/class/label"] - 1 for r in val) == sorted(target[order[1497:]].tolist())
    assert {(r["image/height"], r["image/width"]) for r in train} == {(32, 32)}
    assert bundled.prepare("digits") == path  # second use: already there
    ds = pipeline.train_dataset("digits", 32, image_size=32, process_index=0, process_count=1)
    assert next(ds.as_numpy_iterator())["image"].shape == (32, 32, 32, 3)


def test_unknown_bundled_name_lists_the_allowed():
    with pytest.raises(ValueError, match=r"'imagenet' is unknown; allowed: \['digits', 'fashion_mnist', 'photos'\]"):
        bundled.prepare("imagenet")


@pytest.mark.slow
def test_photos_are_imagenet_like_jpegs(tmp_path):
    from PIL import Image
    import io
    path = bundled.prepare("photos", tmp_path)
    train = tfrecords.read_examples(tfrecords.list_files(path, "train"))
    assert len(train) >= 1000
    sizes = {Image.open(io.BytesIO(r["image/encoded"])).size for r in train[:50]}
    assert sizes <= {(500, 375), (375, 500)}
    assert len({r["image/class/synset"] for r in train}) >= 8  # cut from many real photographs


def _write_idx(path, array):
    """An IDX file written from its published layout (magic 0x0000 08 <rank>, big-endian sizes, raw bytes)."""
    import gzip
    import struct
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion(folder, n_train=20, n_val=10):
    rng = np.random.default_rng(3)
    arrays = {}
    for split, n, stem in (("train", n_train, "train"), ("validation", n_val, "t10k")):
        # smooth images (a vertical ramp per image) survive JPEG almost exactly
        images = (np.linspace(0, 1, 28)[None, :, None] * rng.integers(60, 255, (n, 1, 1))).repeat(28, 2)
        labels = rng.integers(0, 10, n)
        _write_idx(folder / f"{stem}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", labels)
        arrays[split] = (images.astype(np.uint8), labels)
    return arrays


def test_fashion_mnist_is_converted_from_the_idx_files(tmp_path, monkeypatch):
    from PIL import Image
    import io
    idx = tmp_path / "idx"
    idx.mkdir()
    arrays = _fake_fashion(idx)
    monkeypatch.setenv("LABKIT_FASHION_MNIST_DIR", str(idx))
    monkeypatch.setitem(bundled.DATASETS, "fashion_mnist", dict(bundled.DATASETS["fashion_mnist"], train=20,
                                                                 validation=10, shards=(4, 2)))
    path = bundled.prepare("fashion_mnist", tmp_path / "data")
    for split, (images, labels) in arrays.items():
        files = tfrecords.list_files(path, split)
        records = tfrecords.read_examples(files)
        assert len(records) == len(labels)
        assert sorted(r["image/class/label"] - 1 for r in records) == sorted(labels.tolist())
        first = tfrecords.read_examples(files[0])[0]  # round-robin: shard 0 starts with image 0
        assert first["image/class/label"] - 1 == labels[0]
        assert first["image/class/text"].decode() == bundled.FASHION_MNIST_CLASSES[labels[0]]
        rgb = np.asarray(Image.open(io.BytesIO(first["image/encoded"])))
        assert rgb.shape == (28, 28, 3) and (first["image/height"], first["image/width"]) == (28, 28)
        assert np.abs(rgb[..., 0].astype(int) - images[0]).mean() < 2.0  # JPEG q95 of a smooth image
    assert tfrecords.read_info(path)["num_classes"] == 10


def test_fashion_mnist_missing_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_FASHION_MNIST_DIR", str(tmp_path))
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)  # not on Colab: no download
    with pytest.raises(FileNotFoundError, match=r"apt-get install dataset-fashion-mnist.*make fashion-mnist"):
        bundled.prepare("fashion_mnist", tmp_path / "data")
    assert not (tmp_path / "data" / "fashion_mnist").exists()


def test_read_idx_rejects_a_file_that_is_not_idx(tmp_path):
    bad = tmp_path / "x.idx"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(ValueError, match=r"header '89504e47' is not 0000 08 <rank>"):
        bundled.read_idx(bad)
    _write_idx(tmp_path / "ok.gz", np.arange(6).reshape(2, 3))
    assert bundled.read_idx(tmp_path / "ok.gz").tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.slow
def test_fashion_mnist_from_debian_has_every_image_and_label(tmp_path):
    import gzip
    import os
    from pathlib import Path
    import tensorflow as tf
    folder = Path(os.environ.get("LABKIT_FASHION_MNIST_DIR") or "/usr/share/datasets/fashion-mnist")
    if not (folder / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make fashion-mnist)")
    path = bundled.prepare("fashion_mnist", tmp_path)
    spec = {"image/class/label": tf.io.FixedLenFeature([], tf.int64)}
    for split, n, stem in (("train", 60000, "train"), ("validation", 10000, "t10k")):
        ds = tf.data.TFRecordDataset(tfrecords.list_files(path, split))
        labels = np.concatenate(list(ds.map(lambda r: tf.io.parse_single_example(r, spec)["image/class/label"])
                                     .batch(10000).as_numpy_iterator())) - 1
        expected = np.frombuffer(gzip.open(folder / f"{stem}-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
        assert len(labels) == n == len(expected)
        assert np.bincount(labels, minlength=10).tolist() == np.bincount(expected, minlength=10).tolist()
        assert np.bincount(labels).tolist() == [n // 10] * 10  # Fashion-MNIST is balanced
    batch = next(pipeline.eval_dataset(str(path), 16, image_size=28, num_classes=10, process_index=0,
                                       process_count=1).as_numpy_iterator())
    assert batch["image"].shape == (16, 28, 28, 3) and set(batch["label"]) <= set(range(10))
