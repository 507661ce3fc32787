"""A client that writes its whole body before reading the answer reads the 413, not a connection reset.

Python's urllib sends ``Connection: close`` and writes all of a body before it reads: when the service
answered 413 without reading the body, uvicorn closed the socket with the body unread in the kernel's
buffer, the kernel sent a reset and urllib saw ``ConnectionResetError``/``BrokenPipeError``. The body is now
read and dropped first (``service.limits``: up to ``DRAIN_LIMIT_BYTES``). A real ``python -m service``
with the default limits (8 MiB body) on 127.0.0.1:18700-18749, and 16 MiB bodies.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hardening_support import Server, start_server
from starlette.types import Message, Receive, Scope

from bench.procs import free_ports
from service.limits import DRAIN_LIMIT_BYTES, discard_body, drain_request
from service.settings import Settings

PORTS = range(18700, 18750)  # reserved for these tests
MAX_BODY = Settings.model_fields["max_body_bytes"].default  # 8 MiB: the server runs with the defaults
BIG = 16 * 1024 * 1024
V2_INFER = "/v2/models/fashion-mnist-dropout-mlp/infer"
PATHS = ["/predict", "/predict/uncertainty", V2_INFER]


def _free_port() -> int:
    return free_ports(PORTS)[0]


@pytest.fixture(scope="module")
def server(trained_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real service with the default body limit; after the module it must stop cleanly, having logged no error."""
    log = tmp_path_factory.mktemp("whole_body") / "service.log"
    srv = start_server(trained_artifact, log, port=_free_port())
    try:
        srv.wait_ready()
        yield srv
    finally:
        if srv.proc.poll() is None:
            assert srv.stop() == 0, srv.output()
    assert "Traceback" not in srv.output() and "ERROR" not in srv.output(), srv.output()


def big_json() -> bytes:
    """16 MiB of valid JSON: one flat list of zeros."""
    body = b'{"images": [' + b"0," * ((BIG - 15) // 2) + b"0]}"
    assert BIG - 2 <= len(body) <= BIG + 2 and len(body) > MAX_BODY
    return body


def check_error(path: str, payload: dict[str, object]) -> None:
    """The REST shape for the REST endpoints, the protocol's for v2; both name the limit."""
    if path == V2_INFER:
        assert set(payload) == {"error"} and isinstance(payload["error"], str), payload
        assert payload["error"].startswith("body: ") and "MCSERVE_MAX_BODY_BYTES" in payload["error"], payload
    else:
        error = payload["error"]
        assert isinstance(error, dict) and error["code"] == "payload_too_large" and error["field"] == "body", payload
        assert str(MAX_BODY) in error["message"], payload


def still_serves(server: Server) -> None:
    image = [[0] * 28 for _ in range(28)]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/readyz").status_code == 200
        r = client.post("/predict", json={"images": [image]})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 1, r.text
        r = client.post("/predict/uncertainty", json={"images": [image], "n_samples": 5, "seed": 1})
        assert r.status_code == 200 and r.json()["n_samples"] == 5, r.text
        v2 = {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 784], "data": [0.0] * 784}]}
        r = client.post(V2_INFER, json=v2)
        assert r.status_code == 200 and r.json()["outputs"], r.text


@pytest.mark.parametrize("path", PATHS)
def test_urllib_whole_body_client_reads_the_413(server: Server, path: str) -> None:
    request = urllib.request.Request(server.url + path, data=big_json(), headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    assert caught.value.code == 413
    assert caught.value.headers["Content-Type"] == "application/json"
    check_error(path, json.loads(caught.value.read()))
    still_serves(server)


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of the response body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _request(path: str, headers: str, body: bytes) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{headers}\r\n".encode() + body


@pytest.mark.parametrize("close", [True, False], ids=["connection-close", "keep-alive"])
@pytest.mark.parametrize("path", PATHS)
def test_raw_socket_whole_body_then_read(server: Server, path: str, close: bool) -> None:
    """Headers declaring 16 MiB and the whole body written before anything is read; then the 413. Kept alive,
    the connection serves the next request (the body was read to its end, so the framing is intact)."""
    body = big_json()
    extra = f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "")
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(_request(path, extra, body))
        status, headers, answer = _read_response(sock)
        assert status == 413 and headers["content-type"] == "application/json"
        check_error(path, json.loads(answer))
        if close:
            assert headers.get("connection") == "close" and sock.recv(1) == b""  # an orderly close, no reset
        else:
            assert "connection" not in headers
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert _read_response(sock)[0] == 200
    still_serves(server)


@pytest.mark.parametrize("path", PATHS)
def test_chunked_body_past_the_limit_is_drained_too(server: Server, path: str) -> None:
    piece = b"0," * 32768
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(BIG // len(piece))) + b"0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(_request(path, "Transfer-Encoding: chunked\r\n", chunks))
        status, headers, answer = _read_response(sock)
        assert status == 413 and "connection" not in headers
        check_error(path, json.loads(answer))
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert _read_response(sock)[0] == 200


@pytest.mark.parametrize("path", PATHS)
def test_body_over_the_drain_bound_is_refused_at_once_and_closed(server: Server, path: str) -> None:
    """Past ``DRAIN_LIMIT_BYTES`` nothing is read: the 413 comes at once, with ``Connection: close``."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(_request(path, f"Content-Length: {DRAIN_LIMIT_BYTES + 1}\r\n", b"0," * 1000))
        status, headers, answer = _read_response(sock)
        assert status == 413 and headers.get("connection") == "close"
        check_error(path, json.loads(answer))
    still_serves(server)


@pytest.mark.parametrize("path", PATHS)
def test_client_waiting_for_100_continue_is_refused_without_inviting_the_body(server: Server, path: str) -> None:
    """curl sends ``Expect: 100-continue`` with big bodies: it gets the 413 instead of ``100 Continue`` (reading
    the body would invite it) and the connection closed, and has sent no body to be reset."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(_request(path, f"Content-Length: {BIG}\r\nExpect: 100-continue\r\n", b""))
        status, headers, answer = _read_response(sock)
        assert status == 413 and headers.get("connection") == "close"
        check_error(path, json.loads(answer))


# discard_body / drain_request, the reusable drain (the auth layer calls them before 401/403/429).


def _receiver(messages: list[Message], hang: bool = False) -> tuple[Receive, list[Message]]:
    """A ``receive`` handing out ``messages``, then ``http.disconnect`` (or nothing, with ``hang``), and its log."""
    log: list[Message] = []

    async def receive() -> Message:
        if not messages:
            if hang:
                await asyncio.sleep(3600)
            return {"type": "http.disconnect"}
        log.append(messages.pop(0))
        return log[-1]

    return receive, log


def _body(*sizes: int) -> list[Message]:
    return [{"type": "http.request", "body": b"x" * n, "more_body": i < len(sizes) - 1} for i, n in enumerate(sizes)]


def test_discard_body_reads_to_the_end() -> None:
    receive, log = _receiver(_body(1000, 1000, 1000))
    assert asyncio.run(discard_body(receive, 10_000)) is True
    assert len(log) == 3


def test_discard_body_stops_past_its_limit_or_on_disconnect_or_timeout() -> None:
    receive, log = _receiver(_body(*[1000] * 10))
    assert asyncio.run(discard_body(receive, 2500)) is False
    assert len(log) == 3  # stopped as soon as the count passed the limit, the rest left unread
    receive, _ = _receiver(_body(1000, 1000)[:1])  # the client goes away mid-body
    assert asyncio.run(discard_body(receive, 10_000)) is False
    receive, _ = _receiver(_body(1000, 1000)[:1], hang=True)  # and one that stops sending
    assert asyncio.run(discard_body(receive, 10_000, timeout=0.05)) is False


def _scope(*headers: tuple[bytes, bytes]) -> Scope:
    return {"type": "http", "method": "POST", "headers": list(headers)}


def test_drain_request() -> None:
    receive, log = _receiver(_body(100))
    assert asyncio.run(drain_request(_scope(), receive)) is True and not log  # no body: nothing to read
    assert asyncio.run(drain_request(_scope((b"content-length", b"0")), receive)) is True and not log
    scope = _scope((b"content-length", b"100"), (b"expect", b"100-continue"))
    assert asyncio.run(drain_request(scope, receive)) is False and not log  # waits for 100 Continue: not invited
    scope = _scope((b"content-length", str(DRAIN_LIMIT_BYTES + 1).encode()))
    assert asyncio.run(drain_request(scope, receive)) is False and not log  # over the bound: not read at all
    assert asyncio.run(drain_request(_scope((b"content-length", b"100")), receive)) is True and len(log) == 1
    receive, log = _receiver(_body(10, 10, 10))
    assert asyncio.run(drain_request(_scope((b"transfer-encoding", b"chunked")), receive)) is True and len(log) == 3
