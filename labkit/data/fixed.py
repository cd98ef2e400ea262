"""data.fixed: a small fixed batch of real images held in memory, for demos and step tests.

Owns ``digits_batch``: scikit-learn's bundled 8x8 handwritten digits (real scans, offline), upscaled to RGB.
Must not: stream, shuffle or augment (that is the tf.data pipeline's job).
"""
from __future__ import annotations

import numpy as np

__all__ = ["digits_batch"]


def digits_batch(n: int = 128, size: int = 16, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` real digits (images ``[n, size, size, 3]`` float32 standardized, labels ``[n]`` int32 in 0..9).

    ``size`` must be a multiple of 8 (nearest-neighbour upscaling keeps the pixels exact).
    """
    from sklearn.datasets import load_digits
    digits = load_digits()
    if not 1 <= n <= len(digits.images) - offset:
        raise ValueError(f"digits_batch: n must be in [1, {len(digits.images) - offset}], got {n}")
    if size % 8:
        raise ValueError(f"digits_batch: size must be a multiple of 8, got {size}")
    images = digits.images[offset:offset + n].astype(np.float32) / 16.0   # pixel values 0..16
    images = np.kron(images, np.ones((size // 8, size // 8), np.float32))
    images = (images - 0.3) / 0.4  # roughly zero-mean, unit-variance over the data set
    return np.repeat(images[..., None], 3, axis=-1), digits.target[offset:offset + n].astype(np.int32)
