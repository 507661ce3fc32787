"""service.httpproto: a response's head and body in one write, over a real uvicorn server and a raw socket."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from service.httpproto import OneWriteProtocol, _OneWrite


class _Recorder:
    """A transport that records what it is asked to send (the unit tests' stand-in for the socket)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def writelines(self, parts: Any) -> None:
        self.sent.append(b"".join(parts))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


def test_head_and_body_go_in_one_write_and_a_lone_write_by_the_end_of_the_turn() -> None:
    async def scenario() -> list[list[bytes]]:
        real = _Recorder()
        wrapped = _OneWrite(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        wrapped.write(b"HEAD")
        wrapped.write(b"BODY")
        after_pair = list(real.sent)
        wrapped.write(b"LONE")
        held = list(real.sent)
        await asyncio.sleep(0)  # the loop's turn ends: what was held goes out
        flushed = list(real.sent)
        wrapped.write(b"LAST")
        wrapped.close()  # closing sends what is held first
        assert real.closed and wrapped.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest: the real one's
        return [after_pair, held, flushed, list(real.sent)]

    after_pair, held, flushed, closed = asyncio.run(scenario())
    assert after_pair == [b"HEADBODY"]
    assert held == [b"HEADBODY"]
    assert flushed == [b"HEADBODY", b"LONE"]
    assert closed == [b"HEADBODY", b"LONE", b"LAST"]


def test_nothing_is_written_to_a_closing_transport() -> None:
    async def scenario() -> list[bytes]:
        real = _Recorder()
        wrapped = _OneWrite(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        wrapped.write(b"HEAD")
        real.closed = True  # the peer went away before the turn ended
        await asyncio.sleep(0)
        return real.sent

    assert asyncio.run(scenario()) == []


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": f"{message['type']}.complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    path = scope["path"]
    if path == "/stream":  # a head, then body parts that come later: the head must not wait for them
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for part in (b"one,", b"two,", b"three"):
            await asyncio.sleep(0.6)  # far longer than a loaded machine takes to send a head
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    data = b"echo:" + body
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": data})


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    """A real uvicorn server (httptools, uvloop where installed) speaking through :class:`OneWriteProtocol`."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(_app, host="127.0.0.1", port=port, http=OneWriteProtocol, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield port
    srv.should_exit = True
    thread.join(10)


class _Reader:
    """Responses with a content-length off one connection, in order (bytes past one response are the next's)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.data = sock, b""

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"connection closed mid-response: {self.data!r}"
        self.data += chunk

    def response(self) -> tuple[bytes, bytes]:
        while b"\r\n\r\n" not in self.data:
            self._more()
        head, _, rest = self.data.partition(b"\r\n\r\n")
        fields = [line.split(b":", 1) for line in head.split(b"\r\n")[1:]]
        length = next(int(v) for k, v in fields if k.strip().lower() == b"content-length")
        while len(rest) < length:
            self._more()
            rest = self.data.partition(b"\r\n\r\n")[2]
        self.data = rest[length:]
        return head, rest[:length]


def test_keep_alive_requests_on_one_connection_get_whole_answers(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        for i in range(3):
            payload = f"request {i}".encode()
            length = str(len(payload)).encode()
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n" + payload)
            head, body = _Reader(sock).response()
            assert head.startswith(b"HTTP/1.1 200 OK")
            assert body == b"echo:" + payload


def test_pipelined_requests_come_back_in_order(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        requests = b"".join(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n" + str(i).encode() for i in range(4)
        )
        sock.sendall(requests)
        reader = _Reader(sock)
        assert [reader.response()[1] for _ in range(4)] == [b"echo:0", b"echo:1", b"echo:2", b"echo:3"]


def test_a_streamed_answer_gets_its_head_before_its_later_body_parts(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        head_after = time.monotonic() - start
        data = first
        while not data.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
    assert first.startswith(b"HTTP/1.1 200 OK") and b"one," not in first  # the head came on its own, at once
    assert head_after < 0.5, f"the head waited {head_after:.2f} s for the body"
    assert b"transfer-encoding: chunked" in data.lower()
    assert b"one," in data and b"two," in data and b"three" in data


def test_a_malformed_request_gets_uvicorns_400_and_the_connection_closes(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400")


def test_a_head_request_gets_its_head_and_no_body(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        sock.sendall(b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):  # nothing follows the head (and the connection stays open)
            data += sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"\r\n\r\n")
