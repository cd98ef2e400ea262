"""data.prefetch: feed the devices from a bounded queue filled by a background thread, and show its state.

Owns ``DevicePrefetcher`` (host batches -> global ``jax.Array``s sharded over the replicas with
``Topology.shard_batch``, multi-process aware; one ``input_queue`` telemetry event per consumer step) and
``normalize``, the small jittable mean/std normalization that the train step runs on the device.
Must not: build tf.data pipelines, or run training steps.

Per step it records: queue depth when the consumer asked, the consumer's wait, images/s produced (in) and
consumed (out) over a sliding window, the cumulative skipped-record count, and ``input_bound`` (the queue was
empty, so the step waited for input).
"""
from __future__ import annotations

import collections
import queue
import threading
import time
from typing import Any, Iterable

import jax
import jax.numpy as jnp

from labkit import telemetry

__all__ = ["DevicePrefetcher", "normalize", "MEAN_RGB", "STDDEV_RGB"]

MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # ImageNet statistics, on the 0..255 scale
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def normalize(images: jax.Array, mean=MEAN_RGB, std=STDDEV_RGB, dtype=jnp.float32) -> jax.Array:
    """``(images - mean) / std`` per channel, computed in float32, returned as ``dtype``. Jittable.

    Call it inside the jitted train step: the host sends bfloat16 0..255 pixels (half the bytes of float32)
    and the device does the arithmetic, as in the paper.
    """
    x = images.astype(jnp.float32)
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x.astype(dtype)


class _End:
    pass


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class DevicePrefetcher:
    """Iterate global device batches while a producer thread keeps up to ``size`` of them ready.

    ``source``: an iterable of dicts of host arrays (this host's rows), e.g. ``train_dataset(...)``. Use it as
    a context manager (or call ``close()``): the producer stops, and no thread is left behind. An exception
    in the producer is raised in the consumer at the step where it would have been used.
    ``stream``: where ``input_queue`` events go (default: the process-wide ``telemetry.current()``);
    ``emit_every``: one event every N steps (0 = none). ``skip_counter`` defaults to ``source.skip_counter``.
    ``start_step``: the training step of the first batch (so ``input_queue`` events line up with ``step``).
    """

    def __init__(self, source: Iterable[dict[str, Any]], topo, *, size: int = 2,
                 stream: telemetry.EventStream | None = None, emit_every: int = 1, window: int = 20,
                 skip_counter=None, start_step: int = 0):
        if size < 1:
            raise ValueError(f"DevicePrefetcher: size must be >= 1, got {size}")
        self.topo, self.size, self._stream, self._emit_every = topo, size, stream, emit_every
        self._skip_counter = skip_counter if skip_counter is not None else getattr(source, "skip_counter", None)
        self._source = source.as_numpy_iterator() if hasattr(source, "as_numpy_iterator") else iter(source)
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._produced = collections.deque(maxlen=window)  # (time, images) per produced batch
        self._consumed = collections.deque(maxlen=window)
        self._lock = threading.Lock()
        self.step = self._start_step = start_step  # events carry training-step numbers, also after a resume
        self.total_wait_s = 0.0
        self.input_bound_steps = 0
        self.images = 0
        self.last: dict | None = None
        self._done = False
        self._thread = threading.Thread(target=self._produce, name="labkit-prefetch", daemon=True)
        self._thread.start()

    # -- producer -------------------------------------------------------------------------------------------
    def _produce(self) -> None:
        try:
            for batch in self._source:
                if self._stop.is_set():
                    return
                arrays = {k: self.topo.shard_batch(v) for k, v in batch.items()}
                n = _batch_images(arrays)
                with self._lock:
                    self._produced.append((time.perf_counter(), n))
                if not self._put(arrays):
                    return
            self._put(_End())
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._put(_Failure(e))

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    # -- consumer -------------------------------------------------------------------------------------------
    def __iter__(self):
        return self

    def __next__(self) -> dict[str, jax.Array]:
        if self._done:
            raise StopIteration
        depth = self._queue.qsize()
        t0 = time.perf_counter()
        while True:
            try:
                item = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._done = True
                    raise RuntimeError("DevicePrefetcher: the producer thread stopped without a result "
                                       "(closed?)") from None
        wait = time.perf_counter() - t0
        if isinstance(item, _End):
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            self.close()
            raise item.error
        self._record(item, depth, wait)
        return item

    def _record(self, batch, depth: int, wait: float) -> None:
        now = time.perf_counter()
        n = _batch_images(batch)
        self._consumed.append((now, n))
        self.images += n
        self.total_wait_s += wait
        bound = depth == 0
        self.input_bound_steps += bound
        with self._lock:
            rate_in = _rate(self._produced)
        self.last = {"depth": depth, "capacity": self.size, "wait_s": wait, "images_per_s_in": rate_in,
                     "images_per_s_out": _rate(self._consumed), "skipped": self.skipped, "input_bound": bound}
        if self._emit_every and self.step % self._emit_every == 0:
            (self._stream or telemetry.current()).emit("input_queue", step=self.step, **self.last)
        self.step += 1

    @property
    def skipped(self) -> int:
        """Bad records the source skipped so far (0 when the source does not count them)."""
        c = self._skip_counter
        return 0 if c is None else int(c.value if hasattr(c, "value") else c())

    def summary(self) -> dict:
        """For a run summary: steps, images, total consumer wait, input-bound steps, skipped records."""
        return {"steps": self.step - self._start_step, "images": self.images, "input_wait_s": self.total_wait_s,
                "input_bound_steps": self.input_bound_steps, "skipped": self.skipped}

    # -- shutdown -------------------------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        """Stop the producer and wait for it (it stops at its next batch boundary)."""
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._done = True

    def __enter__(self) -> "DevicePrefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self._stop.set()


def _batch_images(batch: dict) -> int:
    leaf = batch["image"] if "image" in batch else next(iter(batch.values()))
    return int(leaf.shape[0])


def _rate(window) -> float:
    """Images per second over a window of (time, images): images after the first / time spanned."""
    if len(window) < 2:
        return 0.0
    span = window[-1][0] - window[0][0]
    return sum(n for _, n in list(window)[1:]) / span if span > 0 else 0.0
