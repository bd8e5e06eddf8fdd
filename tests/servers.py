"""Real storage servers on loopback for tests: GCS emulator, moto's S3, a plain HTTP server."""
from __future__ import annotations

import contextlib
import functools
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listened on port {port} within {timeout}s")


@contextlib.contextmanager
def _server(cmd: list[str], port: int):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, proc)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@contextlib.contextmanager
def gcs_emulator(bucket: str):
    """gcp-storage-emulator with `bucket`; yields the environment that points gcsfs and Beam at it."""
    port = free_port()
    cmd = [_bin("gcp-storage-emulator"), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory",
           "--default-bucket", bucket, "-q"]
    with _server(cmd, port):
        yield {
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}",
            "FSSPEC_GCS_TOKEN": "anon",  # no credential discovery (metadata server probing)
            "FSSPEC_GCS_PROJECT": "test-project",
            # gcsfs otherwise asks the storage-control API whether the bucket is hierarchical,
            # which the emulator does not serve: every first access then waits on retries.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }


@contextlib.contextmanager
def s3_server():
    """moto's S3 server; yields the environment that points s3fs (and boto3) at it."""
    port = free_port()
    with _server([_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)], port):
        yield {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }


@contextlib.contextmanager
def http_server(root: Path):
    """A static file server over `root`; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _forget_filesystems() -> None:
    """fsspec caches filesystem objects, endpoint included: a new server needs new ones."""
    import fsspec

    for protocol in ("gs", "s3"):
        fsspec.get_filesystem_class(protocol).clear_instance_cache()


@contextlib.contextmanager
def environ(values: dict):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    _forget_filesystems()
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _forget_filesystems()


@contextlib.contextmanager
def failing_proxy(upstream: str, marker: str, failures: int, status: int = 503):
    """A reverse proxy to `upstream` that answers `status` to the first `failures` requests whose
    path contains `marker` and forwards everything else; yields (its base URL, attempts by marker)."""
    import urllib.error
    import urllib.request

    attempts = {"count": 0}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _forward(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
            if marker in self.path:
                with lock:
                    attempts["count"] += 1
                    fail = attempts["count"] <= failures
                if fail:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            req = urllib.request.Request(upstream + self.path, data=body, headers=headers, method=self.command)
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    code, reply, data = resp.status, resp.headers, resp.read()
            except urllib.error.HTTPError as e:
                code, reply, data = e.code, e.headers, e.read()
            self.send_response(code)
            for k, v in reply.items():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

        def do_HEAD(self):
            self._forward()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", attempts
    finally:
        server.shutdown()
        server.server_close()
