"""Shared test setup: 8 simulated CPU devices, fixed once before any JAX computation, and one JAX compilation
cache for the whole session.

Why the cache: the suite compiles the same programs again and again, in this process and in the processes it
starts (papermill and nbval kernels, killed-and-resumed runs, two-process runs), which inherit the environment.
JAX's persistent cache lets each distinct program compile once per session (the fresh-clone suite went from
26:40 to 16:18; BENCHMARKS.md, "Test suite time"). The cache lives in a fresh temporary folder removed at exit, so no run reuses another's
programs; set JAX_COMPILATION_CACHE_DIR yourself to keep one across runs.
"""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="labkit-tests-jax-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # small programs repeat most

from labkit.mesh import simulate_devices  # noqa: E402

simulate_devices(8)

SHAPES = [(1, 8), (2, 4), (4, 2), (8, 1)]
GROUPS = [1, 2, 4, 8]
