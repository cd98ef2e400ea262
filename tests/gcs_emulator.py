"""A local Cloud Storage for tests: gcp-storage-emulator on 127.0.0.1, and a loopback TLS front for TensorFlow.

Every client labkit's gs:// paths go through is pointed at the emulator, and nothing leaves 127.0.0.1:
- google-cloud-storage and fsspec/gcsfs: ``STORAGE_EMULATOR_HOST`` (an http:// URL).
- tensorstore (Orbax's array writer): ``TENSORSTORE_GCS_HTTP_URL``.
- TensorFlow's own gs:// filesystem (``tf.io.gfile``, ``tf.data``, and ``etils.epath``, which uses it) has no
  endpoint setting: it always talks to https://www.googleapis.com and https://storage.googleapis.com. Its libcurl
  honours ``https_proxy`` and ``CURL_CA_BUNDLE``, so the test sets the proxy to ``_TlsFront`` below. The front
  answers CONNECT only for those Google host names, never opens a connection elsewhere, terminates TLS itself
  with a certificate from a throw-away CA (trustme), and relays each request to the emulator over plain HTTP.
- ``http_proxy`` is the front too, so a plain-HTTP request to any non-loopback host (e.g. a metadata server) is
  refused and recorded; the ``gcs`` fixture fails the module if anything was.
- Credentials: ``GOOGLE_AUTH_TOKEN_FOR_TESTING`` (read by TF and tensorstore) and ``NO_GCE_CHECK``, so no
  client asks a metadata server (a non-loopback address) for a token.
Must not: be used outside tests.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import http.server
import os
import socket
import socketserver
import ssl
import subprocess
import sys
import threading

import pytest

__all__ = ["GcsEmulator", "gcs", "BUCKET"]

# The host names TensorFlow's GCS client connects to; CONNECT to anything else is refused.
_GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com", "oauth2.googleapis.com")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "host", "content-length"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Relay(http.server.BaseHTTPRequestHandler):
    """One TLS connection's HTTP/1.1 requests (keep-alive), each relayed to the emulator on its own connection."""

    protocol_version = "HTTP/1.1"
    emulator_port = 0  # set on the subclass the front builds

    def log_message(self, *args):  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _relay(self) -> None:
        body = self._body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        conn = http.client.HTTPConnection("127.0.0.1", self.emulator_port, timeout=30)
        try:
            conn.request(self.command, self.path, body=body if body or self.command in ("POST", "PUT", "PATCH")
                         else None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() == "location":  # a resumable-upload session URL: keep the client on this front
                v = v.replace(f"http://127.0.0.1:{self.emulator_port}", f"https://{self.headers['Host']}", 1)
            if k.lower() not in _HOP_BY_HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _relay


class _TlsFront(socketserver.ThreadingTCPServer):
    """An HTTPS proxy on 127.0.0.1 that is its own destination: CONNECT + TLS, then relay to the emulator."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, emulator_port: int, context: ssl.SSLContext):
        self.context = context
        self.refused: list[str] = []
        self.relay = type("_BoundRelay", (_Relay,), {"emulator_port": emulator_port})
        super().__init__(("127.0.0.1", 0), _ConnectHandler)


class _ConnectHandler(socketserver.StreamRequestHandler):
    disable_nagle_algorithm = True  # small header + body writes: without this each reply waits ~40 ms for ACKs
    def handle(self) -> None:
        line = self.rfile.readline(65536).decode("latin-1").split()
        while self.rfile.readline(65536) not in (b"\r\n", b"\n", b""):
            pass
        host = line[1].rsplit(":", 1)[0] if len(line) >= 2 and line[0] == "CONNECT" else None
        if host not in _GOOGLE_HOSTS:
            self.server.refused.append(" ".join(line))
            self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.wfile.flush()
        try:
            tls = self.server.context.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with contextlib.suppress(OSError, ssl.SSLError):
            self.server.relay(tls, self.client_address, self.server)
        with contextlib.suppress(OSError):
            tls.close()


def _patch_empty_uploads() -> None:
    """gcp-storage-emulator fails a media upload with an empty body (TF's directory markers): store b""."""
    from gcp_storage_emulator.handlers import objects
    if getattr(objects._media_upload, "_labkit_patched", False):
        return
    original = objects._media_upload

    def media_upload(request, response, storage):
        if request.data is None:
            request._data = b""
        return original(request, response, storage)
    media_upload._labkit_patched = True
    objects._media_upload = media_upload


def _serve(tmp_dir: str, buckets: list[str]) -> None:
    """The child process: start the emulator and the TLS front, print the client env as one JSON line, serve
    until stdin closes (the parent died or stopped us)."""
    import trustme
    from gcp_storage_emulator.handlers.buckets import create_bucket
    from gcp_storage_emulator.server import RequestHandler, create_server
    _patch_empty_uploads()
    _patch_generation_headers()
    received = _count_request_bytes()
    RequestHandler.disable_nagle_algorithm = True
    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    for bucket in buckets:
        create_bucket(bucket, server._storage)
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*_GOOGLE_HOSTS).configure_cert(context)
    ca_file = os.path.join(tmp_dir, "gcs-emulator-ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    front = _TlsFront(port, context)
    threading.Thread(target=front.serve_forever, name="gcs-tls-front", daemon=True).start()
    url, proxy = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{front.server_address[1]}"
    env = {
        "STORAGE_EMULATOR_HOST": url,            # google-cloud-storage, gcsfs
        "TENSORSTORE_GCS_HTTP_URL": url,         # tensorstore (Orbax arrays)
        "TENSORSTORE_GCS_HTTP_VERSION": "1.1",
        "https_proxy": proxy, "HTTPS_PROXY": proxy,  # TensorFlow's libcurl -> the TLS front
        "http_proxy": proxy, "HTTP_PROXY": proxy,    # plain http to anything but loopback: refused, recorded
        "CURL_CA_BUNDLE": ca_file,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator-token",
        "NO_GCE_CHECK": "true",
        "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
    }
    print(json.dumps(env), flush=True)
    for line in sys.stdin:  # commands from the parent
        if line.strip() == "refused":
            print(json.dumps(front.refused), flush=True)
        elif line.strip() == "received":
            print(json.dumps(received[0]), flush=True)
    front.shutdown()
    server.stop()


def _count_request_bytes() -> list[int]:
    """Count the request-body bytes the emulator reads (uploads, compose and other JSON requests, from every
    client: TensorFlow through the front, google-cloud-storage and tensorstore directly); returns the counter."""
    from gcp_storage_emulator import server
    received = [0]
    original = server._read_raw_data

    def read_raw_data(request_handler):
        data = original(request_handler)
        received[0] += len(data or b"")
        return data
    server._read_raw_data = read_raw_data  # _read_data calls it by name
    return received


def _patch_generation_headers() -> None:
    """gcp-storage-emulator omits ``x-goog-generation`` on media downloads; tensorstore (Orbax's array writer)
    reads an object's generation from it and fails with 'Malformed StorageGeneration' without it."""
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects
    original = objects.download

    def download(request, response, storage, *args, **kwargs):
        original(request, response, storage, *args, **kwargs)
        if response.status.value in (200, 206):
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    objects.download = download  # objects.get calls it by name
    for _, handlers in server.HANDLERS:
        for method, fn in list(handlers.items()):
            if fn is original:
                handlers[method] = download


class GcsEmulator:
    """The emulator and its TLS front in a child process (TensorFlow holds the GIL in some calls, e.g.
    ``TFRecordWriter.close``, so an in-process server would deadlock against it). ``env`` points every client
    at it; ``stop()`` ends the child."""

    def __init__(self, tmp_dir: str, buckets=("labkit-test",)):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.log_file = os.path.join(tmp_dir, "gcs-emulator.log")  # the emulator's own log, for debugging
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen([sys.executable, "-m", "tests.gcs_emulator", tmp_dir, *buckets],
                                          cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                          text=True)
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait(timeout=10)
            raise RuntimeError(f"the GCS emulator did not start (exit code {self._proc.returncode})")
        self.env: dict[str, str] = json.loads(line)

    @property
    def refused(self) -> list[str]:
        """CONNECT requests the front refused (a test asserts none: nothing tried to leave 127.0.0.1)."""
        self._proc.stdin.write("refused\n")
        self._proc.stdin.flush()
        return json.loads(self._proc.stdout.readline())

    @property
    def received(self) -> int:
        """Request-body bytes the emulator has read so far (what clients uploaded, over every connection)."""
        self._proc.stdin.write("received\n")
        self._proc.stdin.flush()
        return json.loads(self._proc.stdout.readline())

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


BUCKET = "labkit-test"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A running emulator for one test module, with every client pointed at it through the environment (also
    inherited by subprocesses). Yields the emulator; on teardown asserts that no client tried to reach a real
    Google host and stops it."""
    emulator = GcsEmulator(str(tmp_path_factory.mktemp("gcs")), (BUCKET,))
    saved = {k: os.environ.get(k) for k in emulator.env}
    os.environ.update(emulator.env)
    try:
        yield emulator
        assert emulator.refused == [], f"a client tried to leave 127.0.0.1: {emulator.refused}"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        emulator.stop()


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2:])
