"""bench.timer: the one clock of every ``labkit bench`` command.

Owns how a benchmark times things: every timed block ends with ``jax.block_until_ready`` on what it returned
(an asynchronously dispatched computation is not finished when the call returns), modes are interleaved block
by block so machine drift hits all of them alike, compile and warm-up are never timed, and results are medians.
Also the machine label (CPU timings are simulation) used in every header, and a run's provenance (machine,
command, date, labkit commit) for the JSON files that notebooks show as reference runs.
Must not: know what it times (callers pass zero-argument block functions).
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable, Iterator

__all__ = ["clock", "timed", "interleave", "medians", "rate", "describe_machine", "provenance"]

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


def provenance(command: str, code_paths: tuple[str, ...], timings: str) -> dict:
    """Where and how a run was measured: CPU model and cores, ``command``, UTC date, labkit commit, whether the
    measuring code (``code_paths``, relative to the checkout) had uncommitted changes, and what the timings are."""
    import datetime
    import platform
    import subprocess
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def git(*args):
        try:
            return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):  # no git, or an installed labkit (no checkout)
            return None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--", *code_paths)
    return {"machine": {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()},
            "command": command,
            "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "labkit_commit": commit,
            "measuring_code_uncommitted": bool(dirty) if dirty is not None else None,
            "timings": timings}
