"""Shared test setup: 8 simulated CPU devices, fixed once before any JAX computation."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from labkit.mesh import simulate_devices  # noqa: E402

simulate_devices(8)

SHAPES = [(1, 8), (2, 4), (4, 2), (8, 1)]
GROUPS = [1, 2, 4, 8]
