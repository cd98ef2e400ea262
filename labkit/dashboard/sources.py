"""dashboard.sources: where a dashboard's events come from, read incrementally and counted.

Owns two sources of telemetry events and their readers: ``MemorySource`` (the in-memory ``EventStream`` ring
buffer of this process, e.g. a training cell running on a background thread in the same Jupyter kernel) and
``RunDirSource`` (a run directory's ``telemetry*.jsonl`` files, tailed live while another process, such as a
papermill run, writes them). A source is a cheap description; ``open()`` gives an independent ``Reader`` with
its own cursor, so every browser tab or notebook cell reads the whole run from the start without disturbing the
others. Readers count what they cannot show (torn or invalid lines, unknown event kinds, events that rolled out
of the ring buffer) and say in words why there is nothing yet.
Must not: write telemetry, block a writer, or compute statistics (that is the library's job).
"""
from __future__ import annotations

import collections
import os
from pathlib import Path

from labkit import storage, telemetry

__all__ = ["MemorySource", "RunDirSource", "Reader", "as_source"]

# One poll reads at most this much, so a 100k-step file is loaded over several ticks and the page stays live.
_MAX_BYTES_PER_POLL = 4 << 20


class Reader:
    """Incremental reader of one source: ``poll()`` returns the new events since the last call.

    Counters (cumulative): ``seen`` (events returned), ``skipped`` (torn or invalid lines), ``unknown`` (events
    whose kind is not in ``telemetry.KINDS``, by kind in ``unknown_kinds``), ``missed`` (rolled out of a ring
    buffer before this reader saw them). ``status`` is a sentence for the page when nothing has arrived yet.
    """

    def __init__(self):
        self.seen = 0
        self.skipped = 0
        self.missed = 0
        self.unknown_kinds: collections.Counter[str] = collections.Counter()
        self.status = ""
        self.final = False

    @property
    def incomplete(self) -> int:
        """Files whose last line has no newline yet (a writer mid-line, or one that was killed mid-line)."""
        return 0

    def finish(self) -> None:
        """No more data will come (a static snapshot): incomplete last lines count as skipped from now on."""
        self.final = True

    @property
    def unknown(self) -> int:
        return sum(self.unknown_kinds.values())

    def poll(self) -> list[dict]:
        events = [e for e in self._read() if self._known(e)]
        self.seen += len(events)
        return events

    def summary(self) -> str:
        """One line of counters, e.g. ``'1,204 events; 1 torn or invalid line skipped'``."""
        parts = [f"{self.seen:,} events"]
        skipped = self.skipped + (self.incomplete if self.final else 0)
        if skipped:
            parts.append(f"{skipped:,} torn or invalid line{'s' * (skipped != 1)} skipped")
        if self.incomplete and not self.final:
            parts.append(f"{self.incomplete} incomplete last line(s) waiting for a newline")
        if self.unknown:
            kinds = ", ".join(f"{k!r} x{n}" for k, n in sorted(self.unknown_kinds.items()))
            parts.append(f"{self.unknown:,} event{'s' * (self.unknown != 1)} of unknown kind skipped ({kinds})")
        if self.missed:
            parts.append(f"{self.missed:,} missed (rolled out of the ring buffer before this page read them)")
        return "; ".join(parts)

    def _known(self, event: dict) -> bool:
        kind = event.get("kind")
        if kind in telemetry.KINDS:
            return True
        self.unknown_kinds[str(kind)] += 1
        return False

    def _read(self) -> list[dict]:
        raise NotImplementedError


class MemorySource:
    """Events of an in-memory ``telemetry.EventStream`` (default: the process-wide ``telemetry.current()``).

    The training loop only appends to the stream's ring buffer; each reader polls it with its own cursor, so a
    slow or closed page never slows training. Events that roll out of the ring before a reader sees them are
    counted as ``missed``.
    """

    def __init__(self, stream: telemetry.EventStream | None = None):
        self._stream = stream

    @property
    def stream(self) -> telemetry.EventStream:
        # Resolved at read time: a notebook may call telemetry.open_run after building the dashboard.
        return self._stream if self._stream is not None else telemetry.current()

    @property
    def label(self) -> str:
        return "in-memory telemetry of this process"

    def open(self) -> Reader:
        return _MemoryReader(self)

    def __repr__(self) -> str:
        return f"MemorySource({self._stream!r})"


class _MemoryReader(Reader):
    def __init__(self, source: MemorySource):
        super().__init__()
        self._source = source
        self._stream = None
        self._cursor = 0
        self.status = "waiting for events: nothing has been emitted to this telemetry stream yet"

    def _read(self) -> list[dict]:
        stream = self._source.stream
        if stream is not self._stream:  # telemetry.use / open_run swapped the stream: read the new one
            self._stream, self._cursor = stream, 0
        events, self._cursor, missed = stream.since(self._cursor)
        self.missed += missed
        return events


class RunDirSource:
    """Events of a run directory's ``telemetry.jsonl`` (and ``telemetry.hostN.jsonl``), tailed live.

    The directory may not exist yet, or be empty: readers say so and wait. Host files that appear later are
    picked up. Within one poll, events of several hosts are merged by time.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = run_dir if storage.is_url(run_dir) else Path(run_dir)  # a local path or a gs:// URL

    @property
    def label(self) -> str:
        return str(self.run_dir)

    def open(self) -> Reader:
        return _RunDirReader(self.run_dir)

    def __repr__(self) -> str:
        return f"RunDirSource({str(self.run_dir)!r})"


class _RunDirReader(Reader):
    def __init__(self, run_dir: Path):
        super().__init__()
        self._run_dir = run_dir
        self._followers: dict[Path, telemetry.JsonlFollower] = {}
        self._skipped_before = 0
        self._update_status()

    @property
    def incomplete(self) -> int:
        return sum(1 for f in self._followers.values() if f._partial.strip())

    def _update_status(self) -> None:
        d = self._run_dir
        if not storage.exists(d):
            self.status = (f"run directory {d} does not exist (yet): waiting for a run to write "
                           f"{storage.join(d, 'telemetry.jsonl')}")
        elif not storage.isdir(d):
            self.status = f"{d} is not a directory: give the run directory that holds telemetry.jsonl"
        elif not self._followers:
            self.status = f"run directory {d} has no telemetry*.jsonl yet: waiting for the run to start"
        elif not self.seen:
            names = ", ".join(storage.basename(p) for p in self._followers)
            self.status = f"{names} in {d} has no complete event yet: waiting"
        else:
            self.status = ""

    def _read(self) -> list[dict]:
        if storage.isdir(self._run_dir):
            for path in telemetry.telemetry_files(self._run_dir):
                if path not in self._followers:
                    self._followers[path] = telemetry.JsonlFollower(path)
        events: list[dict] = []
        budget = max(_MAX_BYTES_PER_POLL // max(len(self._followers), 1), 1 << 16)
        for follower in self._followers.values():
            events.extend(follower.poll(max_bytes=budget))
        self.skipped = sum(f.skipped for f in self._followers.values())
        if len(self._followers) > 1:
            events.sort(key=lambda e: e.get("time", 0.0) if isinstance(e.get("time"), (int, float)) else 0.0)
        self._update_status()
        if not self.seen and events:
            self.status = ""
        return events


def as_source(obj) -> MemorySource | RunDirSource:
    """A source from what a notebook user naturally has: a source, an ``EventStream``, a path, or None.

    None means the process-wide stream (``telemetry.current()``).
    """
    if isinstance(obj, (MemorySource, RunDirSource)):
        return obj
    if obj is None or isinstance(obj, telemetry.EventStream):
        return MemorySource(obj)
    if isinstance(obj, (str, os.PathLike)):
        return RunDirSource(obj)
    raise TypeError(f"dashboard source: expected MemorySource, RunDirSource, EventStream, a run directory path "
                    f"or None, got {type(obj).__name__}")
