"""data.preprocess: per-image tf.data graph functions, from JPEG bytes to a fixed-size image.

Owns the paper's image ops: the Inception-style random crop (``sample_distorted_bounding_box``: area 0.08-1,
aspect 3/4-4/3, 10 attempts; the center crop when no attempt fits, as in the reference) either *fused* with
decoding (``decode_and_crop_jpeg`` decodes only the window) or after a full decode; the evaluation center
crop (224/256 of the short side); bicubic or bilinear resize;
random flip. Outputs stay in 0..255 (mean/std normalization happens on the device: ``labkit.data.normalize``).
Must not: read files, batch, or know about hosts and devices.
"""
from __future__ import annotations

from labkit.data._tf import import_tf

__all__ = ["AREA_RANGE", "CENTER_CROP_FRACTION", "decode_and_random_crop", "decode_and_center_crop", "resize"]

CENTER_CROP_FRACTION = 224 / 256  # eval: the 224 center of an image resized to 256 (crop padding 32)
AREA_RANGE, _ASPECT, _ATTEMPTS = (0.08, 1.0), (3 / 4, 4 / 3), 10  # the paper's random-crop settings


def resize(image, size: int, bicubic: bool = True):
    """(tf) ``[h, w, 3]`` -> ``[size, size, 3]`` float32."""
    tf = import_tf()
    method = tf.image.ResizeMethod.BICUBIC if bicubic else tf.image.ResizeMethod.BILINEAR
    return tf.image.resize(image, [size, size], method=method)


def _require_jpeg(image_bytes):
    # decode_jpeg also accepts PNG/GIF; decode_and_crop_jpeg does not. Reject non-JPEG bytes in both modes so
    # the fused switch never changes which records are skipped. Likewise a truncated JPEG: the fused decode of
    # a window that ends before the cut succeeds where a full decode fails, so both require the JPEG's
    # end-of-image marker (FF D9; trailing zero padding allowed) before decoding.
    tf = import_tf()
    tf.debugging.assert_equal(tf.io.is_jpeg(image_bytes), True, message="record is not a JPEG")
    trimmed = tf.strings.regex_replace(image_bytes, "\\x00+$", "")
    tail = tf.strings.substr(trimmed, tf.maximum(tf.strings.length(trimmed) - 2, 0), 2)
    tf.debugging.Assert(tf.equal(tail, b"\xff\xd9"), ["JPEG is truncated (no end-of-image marker)"])


def _sample_window(shape, seed=None, area_range=AREA_RANGE):
    """A random crop window; with ``seed`` (a [2] int tensor) stateless, so it depends on the seed alone."""
    tf = import_tf()
    kwargs = dict(bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
                  min_object_covered=0.1, aspect_ratio_range=_ASPECT, area_range=area_range,
                  max_attempts=_ATTEMPTS,
                  use_image_if_no_bounding_boxes=True)
    if seed is None:
        begin, size, _ = tf.image.sample_distorted_bounding_box(shape, **kwargs)
    else:
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(shape, seed=seed, **kwargs)
    return begin, size


def _center_window(shape):
    tf = import_tf()
    h, w = shape[0], shape[1]
    side = tf.cast(CENTER_CROP_FRACTION * tf.cast(tf.minimum(h, w), tf.float32), tf.int32)
    side = tf.maximum(side, 1)
    return (h - side + 1) // 2, (w - side + 1) // 2, side, side


def decode_and_random_crop(image_bytes, size: int, *, fused: bool = True, bicubic: bool = True, seed=None,
                           area_range=AREA_RANGE):
    """(tf) JPEG bytes -> random-crop ``[size, size, 3]`` float32 in 0..255.

    ``fused``: read the JPEG header, sample the window, decode only the window (``decode_and_crop_jpeg``).
    Otherwise decode the whole image, then crop (the naive way: every pixel is decoded, most are thrown away).
    ``seed``: a [2] int tensor for a stateless (reproducible) window; None draws from TF's stateful RNG.
    ``area_range``: the crop's fraction of the image area (the paper's ImageNet setting by default).
    """
    tf = import_tf()
    _require_jpeg(image_bytes)
    if fused:
        shape = tf.io.extract_jpeg_shape(image_bytes)
        window = _crop_or_center(shape, seed, area_range)
        image = tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)
    else:
        image = tf.io.decode_jpeg(image_bytes, channels=3)
        y, x, h, w = tf.unstack(_crop_or_center(tf.shape(image), seed, area_range))
        image = tf.slice(image, tf.stack([y, x, 0]), tf.stack([h, w, -1]))
    return resize(image, size, bicubic)


def _crop_or_center(shape, seed, area_range):
    """``[y, x, h, w]`` of the sampled window; when all attempts failed (the sampler then returns the whole
    frame), the evaluation center crop instead, as the reference preprocessing does."""
    tf = import_tf()
    begin, crop = _sample_window(shape, seed, area_range)
    failed = tf.reduce_all(tf.equal(crop[:2], tf.cast(shape[:2], crop.dtype)))
    sampled = tf.stack([begin[0], begin[1], crop[0], crop[1]])
    center = tf.cast(tf.stack(_center_window(shape)), sampled.dtype)
    return tf.where(failed, center, sampled)


def decode_and_center_crop(image_bytes, size: int, *, fused: bool = True, bicubic: bool = True):
    """(tf) JPEG bytes -> the center ``224/256`` square, resized to ``[size, size, 3]`` float32 in 0..255."""
    tf = import_tf()
    _require_jpeg(image_bytes)
    if fused:
        y, x, h, w = _center_window(tf.io.extract_jpeg_shape(image_bytes))
        image = tf.io.decode_and_crop_jpeg(image_bytes, tf.stack([y, x, h, w]), channels=3)
    else:
        image = tf.io.decode_jpeg(image_bytes, channels=3)
        y, x, h, w = _center_window(tf.shape(image))
        image = image[y:y + h, x:x + w]
    return resize(image, size, bicubic)
