"""labkit.data.preprocess: the reference's center-crop fallback and truncated JPEGs (fused = unfused)."""
import numpy as np
import pytest

from tests.data.conftest import image_for, jpeg


@pytest.mark.parametrize("fused", [True, False])
def test_failed_crop_sampling_falls_back_to_the_center_crop(fused):
    """A 16x128 frame cannot hold a crop of >= 99% of its area at aspect 3/4..4/3: every attempt fails, and
    the reference then uses the evaluation center crop, not the distorted full frame."""
    import tensorflow as tf
    from labkit.data import preprocess
    img = np.tile(np.linspace(0, 255, 128)[None, :, None], (16, 1, 3)).astype(np.uint8)
    data = tf.constant(jpeg(img, quality=95))
    got = preprocess.decode_and_random_crop(data, 8, fused=fused, area_range=(0.99, 1.0), seed=tf.constant([1, 2]))
    # Independent reference: the center 14x14 (224/256 of the short side) of the decoded frame, resized.
    full = tf.io.decode_jpeg(data, channels=3)
    side = int(224 / 256 * 16)
    y, x = (16 - side + 1) // 2, (128 - side + 1) // 2
    want = tf.image.resize(full[y:y + side, x:x + side], [8, 8], method="bicubic")
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-3)
    squashed = tf.image.resize(full, [8, 8], method="bicubic")
    assert np.abs(got.numpy() - squashed.numpy()).max() > 50  # really not the whole frame


@pytest.mark.parametrize("cut", [2, 100, 400])
def test_a_truncated_jpeg_fails_fused_and_unfused_alike(cut):
    """A fused decode of a window above the cut used to succeed where the full decode failed."""
    import tensorflow as tf
    from labkit.data import preprocess
    good = jpeg(image_for(3, 96, 128))
    for fused in (True, False):
        preprocess.decode_and_random_crop(tf.constant(good), 16, fused=fused, seed=tf.constant([0, 1]))
        preprocess.decode_and_random_crop(tf.constant(good + b"\x00" * 5), 16, fused=fused,
                                          seed=tf.constant([0, 1]))  # zero padding after the end marker: fine
        with pytest.raises(tf.errors.InvalidArgumentError):
            preprocess.decode_and_random_crop(tf.constant(good[:-cut]), 16, fused=fused, seed=tf.constant([0, 1]))
