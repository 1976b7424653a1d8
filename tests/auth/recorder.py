"""A tiny HTTP(S) server on 127.0.0.1 that records the raw requests a real client sends and answers 200."""
from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BufferedIOBase
from pathlib import Path


from modelkiln.auth import HttpRequest


@dataclass
class Recorded:
    """One request as it arrived: HTTP framing (Transfer-Encoding: chunked) removed, nothing else."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes

    def request(self, with_body: bool = True) -> HttpRequest:
        return HttpRequest(self.method, self.path, self.query, self.headers, self.body if with_body else None)


def _read_http_chunked(rfile: BufferedIOBase) -> bytes:
    body = bytearray()
    while True:
        size = int(rfile.readline().split(b";")[0].strip(), 16)
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # HTTP trailer fields: boto3 sends none (its trailers live inside aws-chunked)
            return bytes(body)
        body += rfile.read(size)
        rfile.readline()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # so the base class answers Expect: 100-continue

    def do_PUT(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = _read_http_chunked(self.rfile)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        path, _, query = self.path.partition("?")
        self.server.recorded.append(Recorded(self.command, path, query, list(self.headers.items()), body))  # type: ignore[attr-defined]
        reply = b'{"CompilationJobSummaries": []}' if path == "/" else b""
        self.send_response(200)
        self.send_header("ETag", '"0123456789abcdef0123456789abcdef"')
        self.send_header("x-amzn-RequestId", "kiln-test")
        self.send_header("Content-Type", "application/x-amz-json-1.1" if path == "/" else "application/xml")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_POST = do_GET = do_PUT

    def log_message(self, format: str, *args: object) -> None:
        pass


class Recorder:
    """Serve on an ephemeral port of 127.0.0.1 (TLS when given a cert) until the context exits."""

    def __init__(self, cert: Path | None = None) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.recorded = []  # type: ignore[attr-defined]
        if cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if cert else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def recorded(self) -> list[Recorded]:
        return self.server.recorded  # type: ignore[attr-defined]

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def self_signed_cert(folder: Path) -> Path:
    """A throwaway certificate + key for 127.0.0.1 (one PEM file), made with the openssl command."""
    assert shutil.which("openssl"), "make system-deps installs the openssl command"
    pem = folder / "localhost.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(pem), "-out", str(folder / "cert.pem")],
        check=True, capture_output=True,
    )
    pem.write_bytes(pem.read_bytes() + (folder / "cert.pem").read_bytes())
    return pem
