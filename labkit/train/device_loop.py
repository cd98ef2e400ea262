"""train.device_loop: the one timed training loop: K steps per host call, nothing read back between log points.

Owns
  ``StepPrograms``  the compiled step variants of one run (K steps in one program, one step, one step capturing
                    per-replica BN statistics), compiled ahead of time on first use so compile time is measured
                    apart and the *optimized* program's cost analysis is at hand (MFU), and the window: loss and
                    accuracy of the last step, and the NaN/inf guard (loss, parameters, BN running statistics)
                    AND-ed over every step since the last read, all kept on the device;
  ``run_stretch``   dispatch steps ``first..last`` with no device-to-host copy (the device stays busy: async
                    dispatch queues the steps while the host fetches the next batches);
  ``WindowClock``   the rates, with one definition for the loop, the demo and ``labkit bench train``:
                    steady-state images/s over windows between device-synchronised reads (a window that compiled
                    is left out; so are evaluations and checkpoint writes), and wall images/s over everything.
Why K steps per call: the paper's TPU loop ran ``iterations_per_loop`` steps per host call; with
``lax.fori_loop`` over K stacked batches the host dispatches once per K steps.
Must not: read data, decide cadences, or emit telemetry (callers do, at their host points).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp

__all__ = ["StepPrograms", "run_stretch", "WindowClock", "read_window"]


def _new_window() -> dict:
    return {"finite": jnp.array(True), "loss": jnp.array(0.0, jnp.float32),
            "accuracy": jnp.array(0.0, jnp.float32)}


def _fold(window: dict, metrics: dict) -> dict:
    return {"finite": window["finite"] & metrics["finite"], "loss": metrics["loss"].astype(jnp.float32),
            "accuracy": metrics["accuracy"].astype(jnp.float32)}


class StepPrograms:
    """The step programs of one run, built from ``make_train_step``-style jitted steps.

    ``plain``/``capture``: ``step(state, images, labels) -> (state, metrics, bn_stats)`` (not donating; they are
    traced inside the programs here, which donate the state). ``k``: steps per host call (``steps_per_loop``).
    Every program takes and returns the window, so the guard and metrics never leave the device between reads.
    """

    def __init__(self, plain: Callable, capture: Callable | None = None, *, k: int = 1, replicated=None):
        if k < 1:
            raise ValueError(f"steps_per_loop: must be >= 1, got {k}")
        self.k = k
        self._jitted = {"one": jax.jit(lambda s, w, x, y: self._one(plain, s, w, x, y), donate_argnums=(0, 1))}
        if capture is not None:
            self._jitted["capture"] = jax.jit(lambda s, w, x, y: self._one(capture, s, w, x, y, keep_bn=True),
                                              donate_argnums=(0, 1))
        if k > 1:
            self._jitted["k"] = jax.jit(lambda s, w, xs, ys: self._many(plain, s, w, xs, ys), donate_argnums=(0, 1))
        self.compiled: dict[str, Any] = {}
        self.compile_s = 0.0
        self.fresh = False  # a program compiled since the last ``take_fresh()``
        self._new = jax.jit(_new_window, out_shardings=replicated)

    @staticmethod
    def _one(step, state, window, images, labels, keep_bn=False):
        state, metrics, bn_stats = step(state, images, labels)
        window = _fold(window, metrics)
        return (state, window, bn_stats) if keep_bn else (state, window)

    @staticmethod
    def _many(step, state, window, images, labels):
        xs, ys = jnp.stack(images), jnp.stack(labels)  # K batches as they arrived; one on-device copy

        def body(i, carry):
            state, window = carry
            state, metrics, _ = step(state, xs[i], ys[i])
            return state, _fold(window, metrics)

        return jax.lax.fori_loop(0, len(images), body, (state, window))

    def _program(self, name: str, *args):
        """The compiled program (ahead of time on first use: compile time is measured, never a step's)."""
        if name not in self.compiled:
            t0 = time.perf_counter()
            self.compiled[name] = self._jitted[name].lower(*args).compile()
            self.compile_s += time.perf_counter() - t0
            self.fresh = True
        return self.compiled[name]

    def new_window(self) -> dict:
        """A fresh on-device window (made on the device: no host-to-device copy)."""
        return self._new()

    def one(self, state, window, images, labels, capture: bool = False):
        """One step; with ``capture`` returns ``(state, window, bn_stats)``."""
        name = "capture" if capture else "one"
        return self._program(name, state, window, images, labels)(state, window, images, labels)

    def many(self, state, window, images: list, labels: list):
        """``k`` steps in one host call (``len(images) == k``)."""
        images, labels = tuple(images), tuple(labels)
        return self._program("k", state, window, images, labels)(state, window, images, labels)

    def cost_analysis(self, state, window, images, labels) -> dict | None:
        """XLA's cost analysis of the compiled (optimized) one-step program; compiles it if it never ran."""
        try:
            cost = self._program("one", state, window, images, labels).cost_analysis()
        except Exception:  # noqa: BLE001 - some backends do not implement it
            return None
        if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
            cost = cost[0] if cost else None
        return cost or None

    def take_fresh(self) -> bool:
        fresh, self.fresh = self.fresh, False
        return fresh


def run_stretch(programs: StepPrograms, state, window, batches: Iterator[dict], count: int, *,
                capture_last: bool = False):
    """Dispatch ``count`` steps (the last one capturing BN statistics if asked); no device-to-host copy.

    Returns ``(state, window, bn_stats or None, input_wait_s)``: ``bn_stats`` are left on the device.
    """
    bn_stats, wait = None, 0.0
    plain = count - 1 if capture_last else count
    done = 0
    while done < plain:
        if programs.k > 1 and plain - done >= programs.k:
            pulled = [_pull(batches) for _ in range(programs.k)]
            wait += sum(w for _, w in pulled)
            state, window = programs.many(state, window, [b["image"] for b, _ in pulled],
                                          [b["label"] for b, _ in pulled])
            done += programs.k
        else:
            batch, w = _pull(batches)
            wait += w
            state, window = programs.one(state, window, batch["image"], batch["label"])
            done += 1
    if capture_last:
        batch, w = _pull(batches)
        wait += w
        state, window, bn_stats = programs.one(state, window, batch["image"], batch["label"], capture=True)
    return state, window, bn_stats, wait


def _pull(batches) -> tuple[dict, float]:
    t0 = time.perf_counter()
    batch = next(batches)
    return batch, time.perf_counter() - t0


def read_window(window: dict) -> dict:
    """The one device-to-host copy of a window: ``{"loss", "accuracy", "finite"}`` as Python values."""
    host = jax.device_get(window)
    return {"loss": float(host["loss"]), "accuracy": float(host["accuracy"]), "finite": bool(host["finite"])}


class WindowClock:
    """Windows between device-synchronised reads, and the two rates.

    ``mark()`` opens a window (after a read); ``close(images, compiled)`` ends it at the next read and returns its
    seconds. Windows that compiled count for the wall rate only. ``pause()``/``resume()`` cut time that is not
    training out of the steady windows (evaluation, checkpoints). ``before_*``: what earlier segments (resumes) accumulated.
    """

    def __init__(self, before_images: int = 0, before_seconds: float = 0.0):
        self.images, self.seconds = before_images, before_seconds  # steady-state, cumulative
        self._t = time.perf_counter()
        self._paused_at = None

    def mark(self) -> None:
        self._t = time.perf_counter()

    def pause(self) -> None:
        self._paused_at = time.perf_counter()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._t += time.perf_counter() - self._paused_at
            self._paused_at = None

    def close(self, images: int, compiled: bool) -> float:
        now = time.perf_counter()
        seconds, self._t = now - self._t, now
        if not compiled:
            self.images += images
            self.seconds += seconds
        return seconds

    @property
    def images_per_s(self) -> float | None:
        """Steady-state rate: images over seconds of the windows that did not compile."""
        return self.images / self.seconds if self.seconds > 0 else None
