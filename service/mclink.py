"""The event loop's end of the MC kernel process's socket (``service.mcprocess``): calls out, replies in, no thread.

The frames and their serialisation are ``multiprocessing.Connection``'s (a 4-byte length, then ``ForkingPickler``
bytes), which the child reads and writes with ``recv`` and ``send``; only this service's own child is ever at the
other end, as with ``Connection.recv`` before.
"""

from __future__ import annotations

import asyncio
import collections
import os
import struct
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from typing import Any

from .errors import ServiceError


class KernelProcessError(ServiceError):
    """503 ``kernel_restarted``: the kernel process could not start, or exited while this request needed it."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "kernel_restarted", message, None)


class Link:
    """The event loop's end of one child's socket: writes framed, pickled calls without blocking (what the socket
    does not take at once is written when it can), reads the replies as they come and hands each to the oldest
    waiting call. The frames and their serialisation are ``multiprocessing.Connection``'s (``ForkingPickler`` over
    the socket pair ``multiprocessing.Pipe`` made), which the child reads and writes with ``recv`` and ``send``: only
    this service's own child is ever at the other end, as with ``Connection.recv`` before."""

    def __init__(self, loop: asyncio.AbstractEventLoop, conn: Any, proc: Any, lost: Callable[[Link], None]) -> None:
        self.loop, self.conn, self.proc, self._lost = loop, conn, proc, lost
        self.fd = conn.fileno()
        os.set_blocking(self.fd, False)
        self._pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._in = bytearray()
        self._out = bytearray()
        self._open = True
        loop.add_reader(self.fd, self._readable)

    def send(self, message: Any) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        if not self._open:
            future.set_exception(KernelProcessError("the MC kernel process is gone; retry"))
            return future
        data = bytes(ForkingPickler.dumps(message))
        header = struct.pack("!i", len(data)) if len(data) <= 0x7FFFFFFF else struct.pack("!iQ", -1, len(data))
        self._pending.append(future)
        if self._out:  # earlier bytes still wait for room: keep the order
            self._out += header
            self._out += data
            return future
        frame = header + data
        try:
            written = os.write(self.fd, frame)
        except BlockingIOError:
            written = 0
        except OSError:
            self._gone()
            return future
        if written < len(frame):
            self._out += frame[written:]
            self.loop.add_writer(self.fd, self._writable)
        return future

    def _writable(self) -> None:
        try:
            written = os.write(self.fd, self._out)
        except BlockingIOError:
            return
        except OSError:
            self._gone()
            return
        del self._out[:written]
        if not self._out:
            self.loop.remove_writer(self.fd)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # end of file: the child exited
            self._gone()
            return
        buf = self._in
        buf += data
        while len(buf) >= 4:
            (size,) = struct.unpack_from("!i", buf)
            start = 4
            if size == -1:
                if len(buf) < 12:
                    return
                (size,) = struct.unpack_from("!Q", buf, 4)
                start = 12
            if len(buf) < start + size:
                return
            reply = ForkingPickler.loads(buf[start : start + size])  # a copy: no view of ``buf`` outlives this line
            del buf[: start + size]
            if self._pending:
                future = self._pending.popleft()
                if not future.done():
                    future.set_result(reply)

    def _gone(self) -> None:
        code = self.proc.exitcode  # None until it is reaped (below, off the loop)
        how = "exited" if code is None else f"exited (code {code})"
        self.detach(KernelProcessError(f"the MC kernel process {how} during this request; it restarts: retry"))
        self._lost(self)
        self.loop.run_in_executor(None, self.proc.join, 5)  # reap it off the loop

    def detach(self, error: Exception) -> None:
        """Stop reading and writing; the calls still waiting fail with ``error``. From another thread (the lifespan
        closes the kernel process in a worker thread) it runs on the loop's own thread, while that loop runs."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self.loop and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.detach, error)
            return
        if not self._open:
            return
        self._open = False
        if not self.loop.is_closed():
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
        waiting = list(self._pending)
        self._pending.clear()
        for future in waiting:
            if not future.done() and not future.get_loop().is_closed():
                future.set_exception(error)
