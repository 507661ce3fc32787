"""uvicorn's httptools protocol with each response's head and body sent in one write (``MCSERVE_HTTP_ONE_WRITE``).

uvicorn writes a response's status line and headers to the socket at ``http.response.start`` and its body at
``http.response.body``: two ``send`` system calls, and on a loopback or LAN connection two segments the client
reads one at a time. For this service's small JSON answers the two took about a sixth of the event loop's time per
``/predict/uncertainty`` request at c = 64 (py-spy), the head's alone about an eighth. Here the head is
held until the response's first body bytes come, and both go in one write; the head waits no longer than the
current turn of the event loop (a response whose body comes later, a stream say, gets its head at the end of that
turn), so nothing is delayed that a client could see. Everything else is uvicorn's own protocol, unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _OneWrite:
    """The connection's transport as the protocol sees it: a write is held until the next write or the end of this
    turn of the event loop, whichever comes first, then sent with it; everything else is the real transport's."""

    __slots__ = ("_held", "_loop", "_real")

    def __init__(self, real: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._real = real
        self._held: bytes | None = None
        self._loop = loop

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
            return
        self._held = None
        self._real.writelines((held, data))  # one vectored write (uvloop), or one joined write (asyncio)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._real.is_closing():
                self._real.write(held)

    def close(self) -> None:
        self.flush()
        self._real.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, pause_reading, get_extra_info, ...: the real ones
        return getattr(self._real, name)


class OneWriteProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` over :class:`_OneWrite`: pass it to uvicorn as ``http=``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_OneWrite(transport, self.loop))  # type: ignore[arg-type]
