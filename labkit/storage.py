"""storage: path I/O for local paths and object-store URLs (``gs://bucket/...``), in one place.

Owns the few file operations labkit needs (read/write text and bytes, append, ranged reads, exists, glob, list,
make directories, remove) with one meaning for a local path and for a URL. Local paths use ``os`` and ``open``
exactly as before. URLs (``gs://``, and any other scheme ``tf.io.gfile`` handles) use TensorFlow's filesystem:
labkit already depends on TensorFlow, and ``tf.data`` (the input pipeline) and ``etils.epath`` (Orbax's
checkpoint metadata) read the same URLs through it, so one set of credentials and settings serves them all.
Paths are strings here: ``pathlib.Path("gs://b/x")`` collapses ``//`` and turns a URL into a local path.
Must not: know about training, telemetry records or run layouts.
"""
from __future__ import annotations

import builtins
import glob as _glob
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
    """A whole file; ``FileNotFoundError`` when it does not exist (local or URL)."""
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
    """
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

    Local: the file opened in ``ab`` mode. URL: objects cannot be appended to, so the handle keeps the object's
    bytes (read once) plus what is written, and rewrites the whole object on ``flush`` at most every
    ``interval_s`` (``flush(force=True)`` and ``close`` always write). Each rewrite is a complete object, so a
    reader sees a prefix of the final contents, never a torn write; the cost is the object's size per rewrite.
    """
    if not is_url(path):
        return builtins.open(path, "ab")
    return _ObjectAppender(_str(path), interval_s)


class _ObjectAppender:
    def __init__(self, path: str, interval_s: float):
        self.path, self.interval_s = path, interval_s
        self._lock = threading.Lock()
        self._data = bytearray(read_bytes(path) if exists(path) else b"")
        self._written = len(self._data)  # bytes the object holds now
        self._last: float | None = None  # when the object was last written by this handle

    def tell(self) -> int:
        return len(self._data)

    def write(self, data: bytes) -> int:
        with self._lock:
            self._data += data
        return len(data)

    def flush(self, force: bool = False) -> None:
        with self._lock:
            if len(self._data) == self._written:
                return
            if not force and self._last is not None and time.monotonic() - self._last < self.interval_s:
                return
            write_bytes(self.path, bytes(self._data))
            self._written, self._last = len(self._data), time.monotonic()

    @property
    def pending(self) -> bool:
        """Bytes written but not yet in the object."""
        return len(self._data) != self._written

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
