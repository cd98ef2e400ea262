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
