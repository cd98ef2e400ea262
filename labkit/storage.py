"""storage: path I/O for local paths and object-store URLs (``gs://bucket/...``), in one place.

Owns the few file operations labkit needs (read/write text and bytes, append, ranged reads, exists, glob, list,
make directories, remove) with one meaning for a local path and for a URL. Local paths use ``os`` and ``open``
exactly as before. URLs (``gs://``, and any other scheme ``tf.io.gfile`` handles) use TensorFlow's filesystem:
labkit already depends on TensorFlow, and ``tf.data`` (the input pipeline) and ``etils.epath`` (Orbax's
checkpoint metadata) read the same URLs through it, so one set of credentials and settings serves them all.
Cloud Storage appends are the exception: ``tf.io.gfile`` cannot compose objects, so ``open_append`` on ``gs://``
composes with google-cloud-storage (Orbax's gs:// client, same application-default credentials), and whole and
ranged reads of ``gs://`` objects use that client too, so a reader in the same process never sees a stale size
from TensorFlow's stat cache.
Paths are strings here: ``pathlib.Path("gs://b/x")`` collapses ``//`` and turns a URL into a local path.
Must not: know about training, telemetry records or run layouts.
"""
from __future__ import annotations

import builtins
import glob as _glob
import logging
import os
import posixpath
import shutil
import threading
import time

__all__ = ["is_url", "join", "basename", "dirname", "absolute", "exists", "isdir", "isfile", "size", "glob",
           "listdir", "makedirs", "read_bytes", "read_text", "write_bytes", "write_text", "read_range",
           "open_file", "open_append", "remove", "rmtree"]

# An object can be rewritten about once a second (Cloud Storage's per-object update limit), so appends to a
# URL are buffered and the object rewritten at most this often.
APPEND_INTERVAL_S = 2.0


def is_url(path) -> bool:
    """True for ``scheme://...`` (gs://, s3://, ...); False for local paths, including ``file://``-less ones."""
    text = os.fspath(path) if not isinstance(path, str) else path
    return "://" in text and not text.startswith("file://")


def _str(path) -> str:
    return path if isinstance(path, str) else os.fspath(path)


def _gfile():
    """``tf.io.gfile``, or a clear error saying what to install for URLs."""
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
    except ImportError as e:
        raise ImportError("labkit.storage: gs:// and other URL paths are read and written with TensorFlow's "
                          "filesystem (tf.io.gfile), and TensorFlow is not importable here "
                          f"({e}); install it: pip install tensorflow-cpu") from e
    return tf.io.gfile


def join(path, *parts) -> str:
    """``os.path.join`` for local paths; ``/``-joined for URLs (never a backslash, never a collapsed ``//``)."""
    path = _str(path)
    if is_url(path):
        return posixpath.join(path, *map(_str, parts))
    return os.path.join(path, *map(_str, parts))


def basename(path) -> str:
    path = _str(path).rstrip("/") if is_url(path) else _str(path)
    return posixpath.basename(path) if is_url(path) else os.path.basename(path)


def dirname(path) -> str:
    path = _str(path)
    return posixpath.dirname(path.rstrip("/")) if is_url(path) else os.path.dirname(path)


def absolute(path) -> str:
    """An absolute local path; a URL unchanged (``Path(url).absolute()`` would make it a local path)."""
    path = _str(path)
    return path if is_url(path) else os.path.abspath(path)


def exists(path) -> bool:
    return _gfile().exists(_str(path)) if is_url(path) else os.path.exists(path)


def isdir(path) -> bool:
    """A directory; for a URL, a prefix that holds objects (or a directory marker)."""
    return _gfile().isdir(_str(path)) if is_url(path) else os.path.isdir(path)


def isfile(path) -> bool:
    if is_url(path):
        gfile = _gfile()
        return gfile.exists(_str(path)) and not gfile.isdir(_str(path))
    return os.path.isfile(path)


def size(path) -> int:
    """Bytes in a file; ``FileNotFoundError`` naming it when it does not exist."""
    if not is_url(path):
        return os.path.getsize(path)
    gfile = _gfile()
    try:
        return int(gfile.stat(_str(path)).length)
    except Exception as e:
        _raise_not_found(e, path)
        raise


def _raise_not_found(error: Exception, path) -> None:
    """TensorFlow's NotFoundError is not an OSError: callers catch FileNotFoundError for local and URL alike."""
    if type(error).__name__ == "NotFoundError":
        raise FileNotFoundError(f"{_str(path)!r} does not exist") from error


def glob(pattern) -> list[str]:
    """Sorted matches of a glob pattern (``*``, ``?``, ``[...]``), local or URL."""
    if is_url(pattern):
        return sorted(_gfile().glob(_str(pattern)))
    return sorted(_glob.glob(_str(pattern)))


def listdir(path) -> list[str]:
    """Sorted entry names of a directory (for a URL: the names under the prefix, without trailing ``/``)."""
    if is_url(path):
        return sorted(name.rstrip("/") for name in _gfile().listdir(_str(path)))
    return sorted(os.listdir(path))


def makedirs(path) -> None:
    """Create a directory and its parents; no error if it exists."""
    if is_url(path):
        _gfile().makedirs(_str(path))
    else:
        os.makedirs(path, exist_ok=True)


def open_file(path, mode: str = "r"):
    """A file object: ``open`` for local paths, ``tf.io.gfile.GFile`` for URLs (modes r, rb, w, wb)."""
    if is_url(path):
        if mode not in ("r", "rb", "w", "wb"):
            raise ValueError(f"storage.open_file: mode {mode!r} is not supported for a URL; allowed: r, rb, w, wb "
                             "(use open_append to append)")
        return _gfile().GFile(_str(path), mode)
    return builtins.open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"}))


def read_bytes(path) -> bytes:
    """A whole file; ``FileNotFoundError`` when it does not exist (local or URL). ``gs://`` objects are read
    with google-cloud-storage, like ``read_range`` (current after a compose made by ``open_append``)."""
    if _str(path).startswith("gs://"):
        blob = _gcs_blob(_str(path))
        if blob is None:
            raise FileNotFoundError(f"{_str(path)!r} does not exist")
        return blob.download_as_bytes(raw_download=True)
    try:
        with open_file(path, "rb") as f:
            return f.read()
    except Exception as e:
        _raise_not_found(e, path)
        raise


def read_text(path) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path, data: bytes) -> None:
    """Write a whole file. Local files are replaced atomically (a temporary file renamed), so a reader never
    sees half of one; an object-store upload is atomic already."""
    path = _str(path)
    if is_url(path):
        with open_file(path, "wb") as f:
            f.write(data)
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with builtins.open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def read_range(path, offset: int, max_bytes: int | None = None) -> tuple[int, bytes]:
    """``(file size, up to max_bytes from offset)`` (None = to the end); ``FileNotFoundError`` if missing.

    Readers that follow a growing file use it: the size tells them whether the file was truncated or replaced.
    ``gs://`` objects are read with google-cloud-storage, the client ``open_append`` composes them with
    (tf.io.gfile caches an object's size for a few seconds and would not see a compose made by another client).
    """
    if _str(path).startswith("gs://"):  # the client that appends (compose), so a same-process reader is current
        blob = _gcs_blob(_str(path))
        if blob is None:
            raise FileNotFoundError(f"{_str(path)!r} does not exist")
        total = int(blob.size)
        if offset >= total:
            return total, b""
        end = total if max_bytes is None else min(total, offset + max_bytes)  # never past the size returned
        return total, blob.download_as_bytes(start=offset, end=end - 1, raw_download=True)
    if is_url(path):
        total = size(path)  # FileNotFoundError when missing
        if offset >= total:
            return total, b""
        with open_file(path, "rb") as f:
            f.seek(offset)
            return total, f.read(-1 if max_bytes is None else max_bytes)
    with builtins.open(path, "rb") as f:
        total = os.fstat(f.fileno()).st_size
        if offset >= total:
            return total, b""
        f.seek(offset)
        return total, f.read(-1 if max_bytes is None else max_bytes)


def open_append(path, *, interval_s: float = APPEND_INTERVAL_S):
    """A binary append handle with ``write``, ``tell``, ``flush`` and ``close``.

    Local: the file opened in ``ab`` mode. URL: objects cannot be appended to, so the handle buffers what is
    written and uploads it on ``flush`` at most every ``interval_s`` (``flush(force=True)`` and ``close`` always
    upload). On ``gs://`` each upload sends only the new bytes: they go to a temporary object that Cloud Storage
    composes onto the end of the object (a server-side copy), so a run's upload grows linearly with its length.
    Each compose replaces the object whole, so a reader sees a prefix of the final contents, never a torn write.
    Other URL schemes have no compose: there the whole object is rewritten (its size per upload).
    """
    if not is_url(path):
        return builtins.open(path, "ab")
    path = _str(path)
    return _ObjectAppender(path, interval_s, compose=path.startswith("gs://"))


def _gcs_client():
    """A google-cloud-storage client (Cloud Storage's compose is not in tf.io.gfile), one per endpoint setting:
    the client reads ``STORAGE_EMULATOR_HOST`` when it is made, so a changed endpoint gets a new client."""
    key = (os.environ.get("STORAGE_EMULATOR_HOST"), os.environ.get("API_ENDPOINT_OVERRIDE"))
    try:
        from google.cloud import storage as gcs
    except ImportError:
        raise ImportError("labkit.storage: appending to a gs:// object (telemetry) composes it with "
                          "google-cloud-storage, which is not installed; install it: "
                          "pip install 'google-cloud-storage>=3,<4' (labkit's own install does)") from None
    client, now = _CLIENTS.get(key), time.monotonic()
    # An anonymous client looks for credentials again now and then: the user may have logged in since
    # (gcloud auth application-default login, Colab's authenticate_user).
    if client is None or (_is_anonymous(client) and now - _ANON_SINCE.get(key, now) > _ANON_RETRY_S):
        client = _CLIENTS[key] = _new_client(gcs)
        if _is_anonymous(client):
            _ANON_SINCE[key] = now
        else:
            _ANON_SINCE.pop(key, None)
    return client


def _is_anonymous(client) -> bool:
    from google.auth.credentials import AnonymousCredentials
    return isinstance(getattr(client, "_credentials", None), AnonymousCredentials)


def _new_client(gcs):
    """Application-default credentials, as Orbax's gs:// checkpoints use them; without any (a laptop that never ran
    ``gcloud auth application-default login``) an anonymous client, which reads public buckets (e.g. a shared data
    set) and is refused, with Cloud Storage's 401, on writes and private objects."""
    from google.auth import exceptions as auth_errors
    try:
        try:
            return gcs.Client()
        except OSError:  # no default project (e.g. user credentials): object calls need none
            return gcs.Client(project=None)
    except auth_errors.DefaultCredentialsError as e:
        if not _WARNED:  # once a process: the anonymous client looks for credentials again every minute
            _WARNED.append(True)
            _log.warning("labkit.storage: no Google Cloud credentials (%s); reading gs:// anonymously (public "
                         "objects only). For private buckets and writes run: gcloud auth application-default login",
                         str(e).splitlines()[0])
        return gcs.Client.create_anonymous_client()


_CLIENTS: dict = {}
_ANON_SINCE: dict = {}  # endpoint key -> when its client became anonymous
_ANON_RETRY_S = 60.0  # how often an anonymous client looks for credentials again
_WARNED: list = []  # the no-credentials warning is given once a process
_log = logging.getLogger(__name__)


def _split_gs(path: str) -> tuple[str, str]:
    bucket, _, name = path[len("gs://"):].partition("/")
    return bucket, name


def _gcs_blob(path: str):
    """The object's current metadata (size, generation), or None when it does not exist."""
    bucket, name = _split_gs(path)
    return _gcs_client().bucket(bucket).get_blob(name)


class _ObjectAppender:
    def __init__(self, path: str, interval_s: float, compose: bool = False):
        self.path, self.interval_s, self.compose = path, interval_s, compose
        self._lock = threading.Lock()
        # Only the size of what is there: nothing already uploaded is held or sent again (compose); without
        # compose the object is rewritten whole, so its bytes are kept.
        if compose:
            blob = _gcs_blob(path)
            self._held, self._stored = bytearray(), 0 if blob is None else int(blob.size)
        else:
            self._held = bytearray(read_bytes(path) if exists(path) else b"")
            self._stored = len(self._held)
        self._new = bytearray()  # written, not yet uploaded
        self._last: float | None = None  # when the object was last written by this handle
        self.uploaded = 0  # bytes this handle sent (object contents only)

    def tell(self) -> int:
        return self._stored + len(self._new)

    def write(self, data: bytes) -> int:
        with self._lock:
            self._new += data
        return len(data)

    def flush(self, force: bool = False) -> None:
        with self._lock:
            if not self._new:
                return
            if not force and self._last is not None and time.monotonic() - self._last < self.interval_s:
                return
            new = bytes(self._new)
            if self.compose:
                self._compose(new)
            else:
                self._held += new
                write_bytes(self.path, bytes(self._held))
                self.uploaded += len(self._held)
            self._stored += len(new)
            self._new.clear()
            self._last = time.monotonic()

    def _compose(self, new: bytes) -> None:
        """Upload ``new`` as a temporary object and compose [object, temporary] into the object."""
        import uuid
        bucket_name, name = _split_gs(self.path)
        bucket = _gcs_client().bucket(bucket_name)
        target = bucket.blob(name)
        if self._stored == 0:
            target.upload_from_string(new, content_type="application/octet-stream")
        else:
            part = bucket.blob(f"{name}.append-{uuid.uuid4().hex}")  # not matched by telemetry*.jsonl
            part.upload_from_string(new, content_type="application/octet-stream")
            try:
                target.compose([bucket.blob(name), part])
            finally:
                part.delete()
        self.uploaded += len(new)

    @property
    def pending(self) -> bool:
        """Bytes written but not yet in the object."""
        return bool(self._new)

    def close(self) -> None:
        self.flush(force=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def remove(path) -> None:
    """Delete one file; ``FileNotFoundError`` if it does not exist."""
    if is_url(path):
        if not exists(path):
            raise FileNotFoundError(f"{_str(path)!r} does not exist")
        _gfile().remove(_str(path))
    else:
        os.remove(path)


def rmtree(path) -> None:
    """Delete a directory and everything under it; no error if it does not exist."""
    if is_url(path):
        if exists(path):
            _gfile().rmtree(_str(path))
    else:
        shutil.rmtree(path, ignore_errors=True)
