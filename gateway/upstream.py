"""Upstream HTTP clients: a lean HTTP/1.1 keep-alive client (default) and httpx (GATEWAY_UPSTREAM_CLIENT=httpx).

Why a client of our own: in the benchmark profile httpx/httpcore/h11 took ~30% of a gateway
worker, and wrote each request as two or three socket sends. This one writes head and body with
one send, parses responses with httptools (C, the parser uvicorn uses) and pools connections per
origin. It does exactly what the gateway needs: POST JSON, read a JSON answer or stream an SSE
body, time out, and be cancelled (closing the connection, which the upstream sees as a
disconnect). TLS works through asyncio (ssl + SNI). No redirects, no proxies, no HTTP/2.

Both clients give the proxy the same small interface: `await open(url, headers, body, timeout,
connect_timeout)` → Response with `.status`, `await read()`, `async for chunk in iter_raw()`,
`await aclose()`; transport failures raise UpstreamTimeout / UpstreamUnreachable.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from urllib.parse import urlsplit

import httptools

from lib.upstream import forbidden_address_reason, pinned_url

IDLE_EXPIRY = 4.0  # below uvicorn's default 5 s keep-alive, so we never reuse a connection the server is closing
MAX_HEAD_BYTES = 64 * 1024  # a response head (status line + headers) larger than this is refused


class UpstreamTimeout(Exception):
    pass


class UpstreamUnreachable(Exception):
    pass


class UpstreamForbidden(UpstreamUnreachable):
    """The upstream's host resolved to an address the gateway must not call (lib.upstream policy)."""


class _Connection(asyncio.Protocol):
    def __init__(self, origin: tuple):
        self.origin = origin
        self.transport = None
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.chunks: deque[bytes] = deque()
        self.headers_done = False
        self.complete = False
        self.closed = False
        self.error: Exception | None = None
        self.waiter: asyncio.Future | None = None
        self.idle_since = 0.0
        self.keep_alive = True
        self.head_bytes = 0

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.headers_done:
            # httptools does not bound the head: an upstream sending headers forever must not
            # grow this process's memory.
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = UpstreamUnreachable(f"invalid HTTP from upstream: {exc}")
            self.transport.abort()
        else:
            if not self.headers_done and self.head_bytes > MAX_HEAD_BYTES:
                self.error = UpstreamUnreachable(f"the upstream's response head is larger than {MAX_HEAD_BYTES} bytes")
                self.transport.abort()
        self._wake()

    def connection_lost(self, exc) -> None:
        self.closed = True
        if not self.complete and self.error is None:
            self.error = UpstreamUnreachable("upstream closed the connection")
        self._wake()

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Wait for anything new from the socket; UpstreamTimeout after `timeout` seconds of silence."""
        if self.error is not None:
            raise self.error
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        timer = loop.call_later(timeout, self._timed_out)
        try:
            await self.waiter
        finally:
            timer.cancel()
            self.waiter = None
        if self.error is not None:
            raise self.error

    def _timed_out(self) -> None:
        self.error = UpstreamTimeout("upstream did not answer in time")
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status, self.headers_done, self.complete = 0, False, False
        self.head_bytes = 0
        self.chunks.clear()


class NativeResponse:
    def __init__(self, client: NativeClient, conn: _Connection, timeout: float):
        self.client, self.conn, self.timeout = client, conn, timeout
        self.status = conn.status
        self.finished = False
        self.head_at = time.perf_counter()  # for the gateway's Server-Timing split (gateway/timing.py)

    async def read(self) -> bytes:
        parts = []
        async for chunk in self.iter_raw():
            parts.append(chunk)
        return b"".join(parts)

    async def iter_raw(self):
        conn = self.conn
        while True:
            if conn.chunks:
                # Everything one socket read delivered goes on as one piece: one send to the client.
                data = conn.chunks.popleft() if len(conn.chunks) == 1 else b"".join(conn.chunks)
                conn.chunks.clear()
                yield data
            if conn.complete:
                self.finished = True
                self._release()
                return
            await conn.wait(self.timeout)

    def _release(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self.client._release(conn, reusable=self.finished)

    async def aclose(self) -> None:
        self._release()


class NativeClient:
    def __init__(self, *, max_idle_per_origin: int = 64):
        self.idle: dict[tuple, list[_Connection]] = {}
        self.max_idle = max_idle_per_origin
        self.ssl_context = ssl.create_default_context()
        self.split_cache: dict[str, tuple] = {}

    def _split(self, url: str) -> tuple:
        cached = self.split_cache.get(url)
        if cached is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https"):
                raise UpstreamUnreachable(f"unsupported upstream URL scheme {parts.scheme!r}")
            tls = parts.scheme == "https"
            port = parts.port or (443 if tls else 80)
            # An IPv6 literal keeps its brackets in the Host header (RFC 9110 7.2): "[::1]:9000".
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            host_header = host if parts.port is None else f"{host}:{parts.port}"
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            cached = ((parts.hostname, port, tls), host_header.encode(), path.encode())
            if len(self.split_cache) < 4096:
                self.split_cache[url] = cached
        return cached

    async def _connection(self, origin: tuple, connect_timeout: float) -> _Connection:
        pool = self.idle.get(origin)
        now = time.monotonic()
        while pool:
            conn = pool.pop()
            if not conn.closed and now - conn.idle_since < IDLE_EXPIRY and not conn.transport.is_closing():
                conn.reset()
                return conn
            conn.transport.close()
        host, port, tls = origin
        loop = asyncio.get_running_loop()
        deadline = loop.time() + connect_timeout
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), connect_timeout)
        except TimeoutError:
            raise UpstreamTimeout("resolving the upstream timed out") from None
        except OSError as exc:
            raise UpstreamUnreachable(f"cannot resolve the upstream: {exc.strerror or exc}") from None
        # Check the addresses we will actually connect to (a URL checked when it was saved can
        # resolve elsewhere later: DNS rebinding), and connect to exactly those.
        for info in infos:
            reason = forbidden_address_reason(info[4][0])
            if reason is not None:
                raise UpstreamForbidden(f"refused to connect: {reason}")
        last_error: Exception = UpstreamUnreachable("the upstream host has no address")
        for family, _, _, _, sockaddr in infos:
            try:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _Connection(origin),
                        sockaddr[0],
                        sockaddr[1],
                        family=family,
                        ssl=self.ssl_context if tls else None,
                        server_hostname=host if tls else None,
                    ),
                    max(0.001, deadline - loop.time()),
                )
                return conn
            except TimeoutError:
                raise UpstreamTimeout("connecting to the upstream timed out") from None
            except OSError as exc:
                last_error = UpstreamUnreachable(f"cannot connect to the upstream: {exc.strerror or exc}")
        raise last_error

    def _release(self, conn: _Connection, *, reusable: bool) -> None:
        if reusable and conn.keep_alive and not conn.closed and conn.error is None:
            pool = self.idle.setdefault(conn.origin, [])
            if len(pool) < self.max_idle:
                conn.idle_since = time.monotonic()
                pool.append(conn)
                return
        if conn.transport is not None:
            conn.transport.close()

    async def open(
        self, url: str, headers: list[tuple[bytes, bytes]], body: bytes, *, timeout: float, connect_timeout: float
    ) -> NativeResponse:
        origin, host, path = self._split(url)
        conn = await self._connection(origin, connect_timeout)
        head = [b"POST ", path, b" HTTP/1.1\r\nhost: ", host, b"\r\ncontent-length: ", str(len(body)).encode(), b"\r\n"]
        for name, value in headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        conn.transport.write(b"".join(head) + body)
        try:
            while not conn.headers_done:
                await conn.wait(timeout)
        except BaseException:
            self._release(conn, reusable=False)
            raise
        return NativeResponse(self, conn, timeout)

    async def aclose(self) -> None:
        for pool in self.idle.values():
            for conn in pool:
                conn.transport.close()
        self.idle.clear()


class HttpxResponse:
    def __init__(self, response):
        self.response = response
        self.status = response.status_code
        self.head_at = time.perf_counter()

    async def read(self) -> bytes:
        try:
            return await self.response.aread()
        except Exception as exc:
            raise _httpx_error(exc) from None

    async def iter_raw(self):
        try:
            async for chunk in self.response.aiter_raw():
                yield chunk
        except Exception as exc:
            raise _httpx_error(exc) from None

    async def aclose(self) -> None:
        await self.response.aclose()


class HttpxClient:
    """The same interface over one shared httpx.AsyncClient (for comparison and as a fallback)."""

    def __init__(self, *, max_connections: int):
        import httpx  # here, not at the top: only this fallback client needs it (startup and memory)

        self.httpx = httpx
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections, keepalive_expiry=IDLE_EXPIRY),
            trust_env=False,
            follow_redirects=False,
        )
        self.checked: dict[tuple, tuple[float, str]] = {}

    async def _checked_address(self, parts, connect_timeout: float) -> str:
        # httpx would resolve on its own, after our check (DNS rebinding). Resolve here, check
        # every address, and have httpx connect to the checked address itself (cached briefly).
        origin = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        checked = self.checked.get(origin)
        if checked is not None and time.monotonic() - checked[0] < 5:
            return checked[1]
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(*origin, type=socket.SOCK_STREAM), connect_timeout)
        except TimeoutError:
            raise UpstreamTimeout("resolving the upstream timed out") from None
        except OSError as exc:
            raise UpstreamUnreachable(f"cannot resolve the upstream: {exc.strerror or exc}") from None
        for info in infos:
            reason = forbidden_address_reason(info[4][0])
            if reason is not None:
                raise UpstreamForbidden(f"refused to connect: {reason}")
        if not infos:
            raise UpstreamUnreachable("the upstream host has no address")
        address = infos[0][4][0]
        if len(self.checked) >= 4096:
            self.checked.clear()
        self.checked[origin] = (time.monotonic(), address)
        return address

    async def open(
        self, url: str, headers: list[tuple[bytes, bytes]], body: bytes, *, timeout: float, connect_timeout: float
    ) -> HttpxResponse:
        parts = urlsplit(url)
        address = await self._checked_address(parts, connect_timeout)
        target, host = pinned_url(url, address)
        request = self.client.build_request(
            "POST",
            target,
            content=body,
            headers=[(b"host", host.encode()), *headers],
            timeout=self.httpx.Timeout(timeout, connect=connect_timeout),
            extensions={"sni_hostname": parts.hostname},
        )
        try:
            return HttpxResponse(await self.client.send(request, stream=True))
        except Exception as exc:
            raise _httpx_error(exc) from None

    async def aclose(self) -> None:
        await self.client.aclose()


def _httpx_error(exc: Exception) -> Exception:
    import httpx  # only the fallback client's errors come here (see HttpxClient)

    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(str(exc))
    if isinstance(exc, httpx.HTTPError):
        return UpstreamUnreachable(str(exc))
    return exc
