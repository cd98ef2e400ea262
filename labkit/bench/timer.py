"""bench.timer: the one clock of every ``labkit bench`` command.

Owns how a benchmark times things: every timed block ends with ``jax.block_until_ready`` on what it returned
(an asynchronously dispatched computation is not finished when the call returns), modes are interleaved block
by block so machine drift hits all of them alike, compile and warm-up are never timed, and results are medians.
Also the machine label (CPU timings are simulation) used in every header.
Must not: know what it times (callers pass zero-argument block functions).
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable, Iterator

__all__ = ["clock", "timed", "interleave", "medians", "rate", "describe_machine"]

clock = time.perf_counter  # the one clock: monotonic, highest resolution


def timed(block: Callable[[], Any]) -> tuple[Any, float]:
    """(result, seconds) of ``block()``, the clock stopped only once its result is ready on the device."""
    import jax
    t0 = clock()
    result = jax.block_until_ready(block())
    return result, clock() - t0


def interleave(modes: dict[str, Callable[[], Any]], blocks: int, *, warmup: int = 1,
               budget_s: float | None = None, min_blocks: int = 3) -> dict[str, list[float]]:
    """Seconds of each mode's block, ``blocks`` rounds of every mode in turn (after ``warmup`` untimed rounds).

    With ``budget_s``, one more untimed round measures the modes and ``blocks`` is cut so the timed rounds take
    about that long, but never below ``min(blocks, min_blocks)``.
    """
    if blocks < 1 or warmup < 0:
        raise ValueError(f"blocks must be >= 1 and warmup >= 0, got {blocks} and {warmup}")
    for _ in range(warmup):
        for block in modes.values():
            timed(block)
    if budget_s is not None:
        probe = sum(timed(block)[1] for block in modes.values())
        blocks = max(min(blocks, min_blocks), min(blocks, int(budget_s / max(probe, 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(blocks):
        for name, block in modes.items():
            times[name].append(timed(block)[1])
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(t) for name, t in times.items()}


def rate(items: Iterator, seconds: float, *, count: Callable[[Any], int], max_items: int = 0,
         warmup: int = 0) -> tuple[float, int]:
    """(items/s, items) pulled from ``items`` for about ``seconds`` (or ``max_items``), after ``warmup`` pulls."""
    import jax
    for _ in range(warmup):
        timed(lambda: next(items))
    t0, n = clock(), 0
    while True:
        n += count(jax.block_until_ready(next(items)))
        elapsed = clock() - t0
        if elapsed >= seconds or (max_items and n >= max_items):
            return n / elapsed, n


def describe_machine(num_devices: int | None = None) -> tuple[str, bool]:
    """(label, simulated): e.g. '2-core CPU, 8 simulated devices: simulation, not hardware numbers'."""
    import jax
    dev = jax.devices()[0]
    n = num_devices or jax.device_count()
    if dev.platform == "cpu":
        return f"{os.cpu_count()}-core CPU, {n} simulated devices: simulation, not hardware numbers", True
    return f"{n} x {dev.device_kind} ({jax.default_backend()})", False
