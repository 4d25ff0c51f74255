"""A small auto-pipelining Redis client for the gateway's hot path (admission and settlement).

Why not redis-py's asyncio client here: in the benchmark profile its per-command machinery
(connection pool, retry wrapper, one socket write per command) was a quarter of a worker's time.
This client keeps ONE connection, queues every command issued during an event-loop turn and
writes them with one send; Redis answers in order, so replies resolve the waiting futures FIFO.
Under concurrency many requests' admissions share a syscall; a lone request pays one round trip.
Commands nobody waits for (settlements, `fire(..., lazy=True)`) are not flushed on their own:
they ride the next write, or go out after LAZY_FLUSH seconds, saving a lone request a send()
and a Redis wake-up.
Everything else (pub/sub, the console) keeps using redis-py.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections import deque
from urllib.parse import unquote, urlparse

LAZY_FLUSH = 0.005  # seconds a lazy command may wait for another write to ride with


class RedisError(Exception):
    pass


class ReplyError(RedisError):
    pass


def encode(args: tuple) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if not isinstance(arg, bytes):
            arg = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class _Parser:
    """Incremental RESP2 parser: feed bytes, take complete replies."""

    def __init__(self):
        self.buf = bytearray()
        self.pos = 0

    def feed(self, data: bytes) -> None:
        if self.pos:
            del self.buf[: self.pos]
            self.pos = 0
        self.buf += data

    def next(self):
        """One complete reply, or raise IndexError when more bytes are needed."""
        start = self.pos
        try:
            value = self._read()
        except IndexError:
            self.pos = start
            raise
        return value

    def _line(self) -> bytes:
        end = self.buf.find(b"\r\n", self.pos)
        if end < 0:
            raise IndexError
        line = bytes(self.buf[self.pos : end])
        self.pos = end + 2
        return line

    def _read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b":":
            return int(rest)
        if kind == b"+":
            return rest
        if kind == b"-":
            return ReplyError(rest.decode(errors="replace"))
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            if len(self.buf) < self.pos + size + 2:
                raise IndexError
            value = bytes(self.buf[self.pos : self.pos + size])
            self.pos += size + 2
            return value
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._read() for _ in range(size)]
        raise RedisError(f"unexpected reply type {kind!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self, client: PipelinedRedis):
        self.client = client
        self.parser = _Parser()
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        waiters = self.client.waiters
        while True:
            try:
                reply = self.parser.next()
            except IndexError:
                return
            if not waiters:
                return
            future = waiters.popleft()[0]
            if not future.done():
                if isinstance(reply, ReplyError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    def connection_lost(self, exc) -> None:
        self.client._lost(self, exc)


class PipelinedRedis:
    def __init__(self, url: str, *, timeout: float = 2.0):
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", "rediss"):
            raise ValueError(f"unsupported Redis URL scheme {parsed.scheme!r}")
        self.host, self.port = parsed.hostname or "localhost", parsed.port or 6379
        self.ssl = ssl.create_default_context() if parsed.scheme == "rediss" else None
        self.username = unquote(parsed.username) if parsed.username else None
        self.password = unquote(parsed.password) if parsed.password else None
        self.db = int((parsed.path or "/0").lstrip("/") or 0)
        self.timeout = timeout
        self.protocol: _Protocol | None = None
        self.connecting: asyncio.Future | None = None
        self.waiters: deque = deque()
        self.outbox: list[bytes] = []
        self.flush_scheduled = False
        self.lazy_timer: asyncio.TimerHandle | None = None
        self.watchdog: asyncio.TimerHandle | None = None
        self.scripts: dict[str, bytes] = {}

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, protocol = await asyncio.wait_for(
            loop.create_connection(
                lambda: _Protocol(self), self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl else None
            ),
            self.timeout,
        )
        self.protocol = protocol
        setup = []
        if self.password is not None:
            setup.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            setup.append(("SELECT", self.db))
        for command in setup:
            await self._send(command)

    async def _ensure(self) -> None:
        if self.protocol is not None:
            return
        if self.connecting is None:
            self.connecting = asyncio.ensure_future(self._connect())
        connecting = self.connecting
        try:
            await asyncio.shield(connecting)
        except Exception as exc:
            raise RedisError(f"cannot connect to Redis: {type(exc).__name__}") from exc
        finally:
            if self.connecting is connecting and connecting.done():
                self.connecting = None

    def _send(self, command: tuple, lazy: bool = False) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiters.append((future, time.monotonic()))
        self.outbox.append(encode(command))
        if lazy:
            if not self.flush_scheduled and self.lazy_timer is None:
                self.lazy_timer = loop.call_later(LAZY_FLUSH, self._flush)
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            loop.call_soon(self._flush)
        if self.watchdog is None:
            self.watchdog = loop.call_later(self.timeout, self._check_stalled)
        return future

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.lazy_timer is not None:
            self.lazy_timer.cancel()
            self.lazy_timer = None
        if not self.outbox:
            return
        data, self.outbox = b"".join(self.outbox), []
        if self.protocol is None or self.protocol.transport is None or self.protocol.transport.is_closing():
            self._fail_all(RedisError("Redis connection lost"))
            return
        self.protocol.transport.write(data)

    def _check_stalled(self) -> None:
        self.watchdog = None
        if not self.waiters:
            return
        if time.monotonic() - self.waiters[0][1] >= self.timeout and self.protocol is not None:
            # Redis stopped answering: drop the connection, which fails everything waiting.
            self.protocol.transport.abort()
            return
        self.watchdog = asyncio.get_running_loop().call_later(self.timeout / 2, self._check_stalled)

    def _lost(self, protocol: _Protocol, exc) -> None:
        if self.protocol is protocol:
            self.protocol = None
        self._fail_all(RedisError(f"Redis connection lost: {exc!r}"))

    def _fail_all(self, error: Exception) -> None:
        waiters, self.waiters = self.waiters, deque()
        self.outbox.clear()
        for future, _ in waiters:
            if not future.done():
                future.set_exception(error)

    async def execute(self, *command, lazy: bool = False):
        await self._ensure()
        return await self._send(command, lazy)

    async def evalsha(self, script: str, keys: list, args: list, *, lazy: bool = False):
        sha = self.scripts.get(script)
        if sha is None:
            sha = self.scripts[script] = hashlib.sha1(script.encode()).hexdigest().encode()
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args, lazy=lazy)
        except ReplyError as exc:
            if "NOSCRIPT" not in str(exc):
                raise
            return await self.execute("EVAL", script, len(keys), *keys, *args)

    def fire(self, script: str, keys: list, args: list, *, lazy: bool = False) -> None:
        """Run a script without waiting for it (its failure is logged by the caller's callback).
        `lazy`: no write of its own; it goes out with the next command (within LAZY_FLUSH)."""
        task = asyncio.ensure_future(self.evalsha(script, keys, args, lazy=lazy))
        task.add_done_callback(_retrieve)

    async def aclose(self) -> None:
        self._flush()  # lazy commands still waiting go out before the connection closes
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.close()
        self.protocol = None


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()
