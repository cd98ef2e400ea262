"""train.checkpoint: Orbax checkpoints of the train state, and the run directory's config guard.

Owns saving/restoring ``TrainState`` (sharded as the live state) with a small JSON of loop metadata, keeping the
last k, and refusing to resume a workdir written with a different config unless forced.
Must not: decide when to save (the loop does) or touch telemetry.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from labkit import storage
from labkit.config import Config, ConfigError

__all__ = ["Checkpointer", "check_workdir_config"]

# Keys that only change what is observed or when, not the computation: a resume may change them freely.
_OBSERVATIONAL = ("log_every_steps", "bn_stats_every_steps", "collective_every_steps", "keep_checkpoints",
                  "checkpoint_every_steps", "prefetch", "target_accuracy", "eval_every_epochs", "steps_per_loop")


def check_workdir_config(workdir: str | Path, config: Config, force: bool = False) -> None:
    """Write ``workdir/config.json``, or check it matches the run being resumed there.

    Only process 0 reads and writes it (atomically: a temporary file renamed); the other processes wait for it
    at a barrier, then check the same file, so no process reads a half-written config. With several processes a
    local workdir must be one directory that every host sees (a shared filesystem); one that is not (each host's
    own disk) is refused on every process at once, so none is left waiting in a collective.
    """
    path = storage.join(workdir, "config.json")  # workdir may be a gs:// URL
    if jax.process_index() == 0:
        _check_against(path, workdir, config, force)
        storage.makedirs(workdir)
        storage.write_text(path, config.to_json())  # atomic: a temporary file renamed, or one object upload
    if jax.process_count() > 1:
        if not storage.is_url(workdir):
            _require_shared(workdir)
        _barrier("labkit: config.json written")
        if jax.process_index() != 0:
            previous = Config.from_dict(json.loads(storage.read_text(path)))
            if config.differences(previous, ignore=_OBSERVATIONAL):
                raise ConfigError(f"workdir {str(workdir)!r}: process {jax.process_index()}'s config differs from "
                                  "process 0's; every process must run the same config")


def _barrier(name: str) -> None:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _broadcast_token(token: int) -> int:
    """Process 0's ``token``, on every process."""
    import numpy as np
    from jax.experimental import multihost_utils
    return int(multihost_utils.broadcast_one_to_all(np.asarray(token, np.int64)))


def _gather_flags(flag: bool) -> list[bool]:
    """Every process's ``flag``, on every process (in process order)."""
    import numpy as np
    from jax.experimental import multihost_utils
    return [bool(x) for x in np.asarray(multihost_utils.process_allgather(np.asarray(flag))).reshape(-1)]


_SHARED_WAIT_S = 5.0  # how long a process waits to see process 0's token (shared filesystems may lag)


def _require_shared(workdir) -> None:
    """A local workdir with several processes: process 0 writes a fresh token there; every process must read it
    back (within ``_SHARED_WAIT_S``: a shared filesystem may show a new file late), or every process raises."""
    import secrets
    import time
    token = _broadcast_token(secrets.randbits(31) if jax.process_index() == 0 else 0)
    marker = storage.join(workdir, ".labkit-shared")
    if jax.process_index() == 0:
        storage.write_text(marker, str(token))
    _barrier("labkit: shared-workdir token written")
    deadline = time.monotonic() + _SHARED_WAIT_S
    while True:
        try:
            seen = storage.read_text(marker).strip() == str(token)
        except FileNotFoundError:
            seen = False
        if seen or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    flags = _gather_flags(seen)
    blind = [i for i, ok in enumerate(flags) if not ok]
    if blind:
        raise ConfigError(
            f"workdir {str(workdir)!r}: a local path, and process(es) {blind} of {len(flags)} cannot see the files "
            "process 0 writes there (each host has its own disk). With several processes the workdir must be one "
            "place every host reads and writes; allowed: a gs:// URL (e.g. gs://BUCKET/runs/NAME), or a "
            "directory on a filesystem shared by all hosts (NFS, Lustre, GCS FUSE)")


def _check_against(path: str, workdir, config: Config, force: bool) -> None:
    if storage.exists(path):
        previous = Config.from_dict(json.loads(storage.read_text(path)))
        diff = config.differences(previous, ignore=_OBSERVATIONAL)
        if diff and not force:
            listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (new, old) in sorted(diff.items()))
            raise ConfigError(f"workdir {str(workdir)!r} holds a run with a different config ({listed}); "
                              "use another workdir, or force the resume (--force / force=True)")


def _require_gcs_client(workdir) -> None:
    """Orbax asks google-cloud-storage about a gs:// bucket (its namespace) before listing checkpoints: without
    the package it fails deep inside Orbax, so say so up front."""
    try:
        import google.cloud.storage  # noqa: F401
    except ImportError:
        raise RuntimeError(f"workdir {str(workdir)!r}: checkpoints on gs:// need the google-cloud-storage package "
                           "(Orbax uses it for gs:// directories), which is not installed; install it with "
                           "`pip install 'google-cloud-storage>=3,<4'` (labkit's own install does)") from None


class Checkpointer:
    """Orbax ``CheckpointManager`` over ``workdir/checkpoints``, keeping the last ``keep`` steps."""

    def __init__(self, workdir: str | Path, keep: int = 2):
        if str(workdir).startswith("gs://"):
            _require_gcs_client(workdir)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        # A string, not a Path: Path("gs://b/w") collapses to "gs:/b/w"; Orbax takes gs:// URLs itself (etils).
        self._manager = ocp.CheckpointManager(storage.join(storage.absolute(workdir), "checkpoints"),
                                              options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, meta: dict) -> None:
        """Save asynchronously (training goes on); ``wait`` or ``close`` makes it durable."""
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)))

    def restore(self, state_like, step: int | None = None):
        """(state, meta) of ``step`` (default: latest), placed with ``state_like``'s shardings."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state_like)
        restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                       meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
