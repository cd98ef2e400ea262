"""lab._reference: reads a committed reference run (``labkit/results/<name>``, package data) for a timing lesson.

Owns where reference runs live and the checks every one of them gets (present, JSON, the keys its command
writes). Must not: recompute what a run shows (each lesson's loader does: ``input_reference``,
``collective_reference``).
"""
from __future__ import annotations

import json
import os
from typing import Callable

from labkit.experiments import RESULTS_DIR  # the one labkit/results/: installed with the package (Colab too)


def read(name: str, path: str | None, *, what: str, command: str, needed: tuple[str, ...], missing_ok: bool,
         valid: Callable[[dict], bool] = lambda doc: True, detail: str = "") -> dict | None:
    """The JSON at ``path`` (default ``labkit/results/<name>``), written by ``command --json``; None where it is
    missing and ``missing_ok``. ``FileNotFoundError`` naming the path, ``ValueError`` naming the missing keys (or
    ``detail`` where the keys are there but ``valid`` says no)."""
    from labkit import storage
    path = path or os.path.join(RESULTS_DIR, name)
    if not storage.exists(path):
        if missing_ok:
            return None
        raise FileNotFoundError(f"{what}: no file at {path!r}; it is committed in labkit/results/ "
                                f"(write one with: {command} --json PATH)")
    doc = json.loads(storage.read_text(path))
    missing = [k for k in needed if k not in doc]
    if missing or not valid(doc):
        raise ValueError(f"{what} {path!r}: missing {missing or [detail]}; allowed: the JSON of `{command} --json` "
                         f"(keys {list(needed)})")
    return doc
