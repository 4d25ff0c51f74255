"""gateway/upstream.py's own HTTP/1.1 client (and the httpx fallback) against real local servers.

Each server here is a real socket server on loopback whose answers the test writes byte by byte,
so chunked bodies, half-closed and dropped connections, oversized heads, IPv6 literals and TLS
with SNI are exactly what the client meets.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

import httpx
import pytest

from gateway import upstream
from gateway.upstream import HttpxClient, NativeClient, UpstreamForbidden, UpstreamTimeout, UpstreamUnreachable
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY, LoopbackServer, chat_body, run_async, start_gateway
from usage.models import UsageEvent

HEADERS = [(b"content-type", b"application/json")]
ANSWER = b'{"ok": true}'


def json_answer(body: bytes = ANSWER, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


class RawServer(LoopbackServer):
    """An HTTP/1.1 server on a loopback socket: it reads each request (head + content-length body)
    and lets `handler(server, head, body, writer)` write the answer; the handler returns False
    to stop serving that connection (after closing or half-closing it itself)."""

    def __init__(self, handler, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None):
        # "localhost" may resolve to ::1 and 127.0.0.1: listen on both, on one port.
        super().__init__(host, gateway_support.free_port() if host == "localhost" else 0, tls)
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []

    async def __aenter__(self):
        await super().__aenter__()
        literal = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{'https' if self.tls else 'http'}://{literal}:{self.port}/v1/chat/completions"
        return self

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                if await self.handler(self, head, body, writer) is False:
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if not writer.is_closing():
                writer.close()


async def answer_json(server, head, body, writer):
    writer.write(json_answer())


async def post(client, url: str, timeout: float = 10) -> tuple[int, bytes]:
    response = await client.open(url, HEADERS, b'{"model": "m"}', timeout=timeout, connect_timeout=5)
    try:
        return response.status, await response.read()
    finally:
        await response.aclose()


async def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


# ---- the native client -----------------------------------------------------------------------
def test_a_chunked_body_is_read_whole_and_relayed_as_it_arrives():
    second_part = asyncio.Event()

    async def chunked(server, head, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"7\r\ndata: 1\r\n")
        await writer.drain()
        await second_part.wait()
        writer.write(b"9\r\n\ndata: 2\n\r\n0\r\n\r\n")

    async def scenario():
        client = NativeClient()
        async with RawServer(chunked) as server:
            response = await client.open(server.url, HEADERS, b"{}", timeout=10, connect_timeout=5)
            assert response.status == 200
            pieces = []
            async for piece in response.iter_raw():
                pieces.append(piece)
                second_part.set()  # the first piece reached us before the server sent the rest
            await response.aclose()
            status, whole = await post(client, server.url)  # same connection, read whole this time
            await client.aclose()
            return pieces, status, whole, server.connections

    pieces, status, whole, connections = run_async(scenario())
    assert pieces == [b"data: 1", b"\ndata: 2\n"]
    assert (status, whole, connections) == (200, b"data: 1\ndata: 2\n", 1)


def test_keep_alive_reuses_one_connection_until_it_has_been_idle_too_long():
    async def scenario():
        client = NativeClient()
        async with RawServer(answer_json) as server:
            for _ in range(3):
                assert await post(client, server.url) == (200, ANSWER)
            reused = server.connections
            # Idle for longer than IDLE_EXPIRY (the server may be closing it): not reused.
            for conn in client.idle[("127.0.0.1", server.port, False)]:
                conn.idle_since -= upstream.IDLE_EXPIRY + 1
            assert await post(client, server.url) == (200, ANSWER)
            await client.aclose()
            return reused, server.connections

    assert run_async(scenario()) == (1, 2)


def test_a_connection_the_server_half_closed_or_asked_to_close_is_not_reused():
    async def half_close(server, head, body, writer):
        writer.write(json_answer())
        await writer.drain()
        writer.write_eof()  # FIN after the answer, without "connection: close"
        return False

    async def close_header(server, head, body, writer):
        writer.write(json_answer(extra=b"connection: close\r\n"))
        await writer.drain()
        writer.close()
        return False

    async def scenario():
        client = NativeClient()
        seen = []
        for handler in (half_close, close_header):
            async with RawServer(handler) as server:
                assert await post(client, server.url) == (200, ANSWER)
                origin = ("127.0.0.1", server.port, False)
                # The FIN arrives: a pooled connection is marked closed and dropped, never written to.
                assert await wait_until(lambda origin=origin: all(c.closed for c in client.idle.get(origin, [])))
                assert await post(client, server.url) == (200, ANSWER)
                seen.append(server.connections)
        await client.aclose()
        return seen

    assert run_async(scenario()) == [2, 2]


def test_a_connection_dropped_mid_body_is_an_error_not_a_short_answer():
    async def drop(server, head, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b'{"partial":')
        await writer.drain()
        writer.close()
        return False

    async def scenario():
        client = NativeClient()
        async with RawServer(drop) as server:
            with pytest.raises(UpstreamUnreachable, match="closed the connection"):
                await post(client, server.url)
            assert client.idle.get(("127.0.0.1", server.port, False), []) == []
        await client.aclose()

    run_async(scenario())


def test_an_oversized_response_head_is_refused():
    async def huge_head(server, head, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(2000):  # ~100 KB of headers, and no end in sight
            writer.write(b"x-filler-%d: %s\r\n" % (i, b"y" * 40))
            await writer.drain()
        return False

    async def scenario():
        client = NativeClient()
        async with RawServer(huge_head) as server:
            with pytest.raises(UpstreamUnreachable, match="response head is larger"):
                await post(client, server.url)
        await client.aclose()

    run_async(scenario())


def test_a_silent_upstream_times_out_and_its_connection_is_dropped():
    async def silent(server, head, body, writer):
        await asyncio.sleep(30)

    async def scenario():
        client = NativeClient()
        async with RawServer(silent) as server:
            with pytest.raises(UpstreamTimeout):
                await post(client, server.url, timeout=0.2)
            assert client.idle.get(("127.0.0.1", server.port, False), []) == []
        await client.aclose()

    run_async(scenario())


@pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback")
@pytest.mark.parametrize("make", [NativeClient, lambda: HttpxClient(max_connections=4)], ids=["native", "httpx"])
def test_an_ipv6_upstream_gets_a_bracketed_host_header(make):
    async def scenario():
        client = make()
        async with RawServer(answer_json, host="::1") as server:
            assert await post(client, server.url) == (200, ANSWER)
        await client.aclose()
        return server.requests[0][0], server.port

    head, port = run_async(scenario())
    host = [line for line in head.split(b"\r\n") if line.lower().startswith(b"host:")]
    assert host == [b"host: [::1]:%d" % port]


def tls_server_context(ca, names: list[str], seen: list) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    context.sni_callback = lambda sock, name, ctx: seen.append(name)
    return context


def test_tls_verifies_the_name_and_sends_it_as_sni():
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()

    async def scenario():
        client = NativeClient()
        ca.configure_trust(client.ssl_context)
        seen: list = []
        async with RawServer(answer_json, host="localhost", tls=tls_server_context(ca, ["localhost"], seen)) as server:
            answered = await post(client, server.url)
        # A certificate for another name is refused: nothing is sent.
        async with RawServer(answer_json, host="localhost", tls=tls_server_context(ca, ["elsewhere.example"], [])) as wrong:
            with pytest.raises(UpstreamUnreachable):
                await post(client, wrong.url)
            refused_requests = len(wrong.requests)
        await client.aclose()
        return answered, seen, refused_requests

    answered, seen, refused_requests = run_async(scenario())
    assert answered == (200, ANSWER)
    assert seen == ["localhost"]
    assert refused_requests == 0


def test_an_address_outside_the_policy_is_refused_before_connecting():
    async def scenario():
        client = NativeClient()
        with pytest.raises(UpstreamForbidden):
            await post(client, "http://169.254.169.254/v1/chat/completions")
        await client.aclose()

    run_async(scenario())


# ---- the httpx fallback (GATEWAY_UPSTREAM_CLIENT=httpx) ------------------------------------------
def test_the_httpx_fallback_reads_chunked_bodies_and_sends_sni():
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()

    async def chunked(server, head, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")

    async def scenario():
        client = HttpxClient(max_connections=4)
        async with RawServer(chunked) as server:
            plain = [await post(client, server.url) for _ in range(2)]
            connections = server.connections
        await client.aclose()
        # The same client over TLS: trust the test CA (the rest of the client as the gateway builds it).
        client = HttpxClient(max_connections=4)
        await client.client.aclose()
        client.client = httpx.AsyncClient(verify=_trusting(ca), trust_env=False)
        seen: list = []
        async with RawServer(answer_json, host="localhost", tls=tls_server_context(ca, ["localhost"], seen)) as server:
            secure = await post(client, server.url)
        await client.aclose()
        return plain, connections, secure, seen

    plain, connections, secure, seen = run_async(scenario())
    assert plain == [(200, b"hello world")] * 2 and connections == 1
    assert secure == (200, ANSWER)
    assert seen == ["localhost"]  # connected to the checked address, the name still sent as SNI


def _trusting(ca) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.mark.django_db(transaction=True)
def test_a_gateway_on_the_httpx_fallback_answers_streams_and_meters(world):
    demo = gateway_support.start_demo()
    gateway = start_gateway("gateway-httpx", GATEWAY_UPSTREAM_CLIENT="httpx")
    try:
        deployment = make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")
        key, plaintext = make_key(world.org, all_models=True, tpm_limit=100_000)
        auth = {"authorization": f"Bearer {plaintext}"}
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            answered = client.post("/v1/chat/completions", json=chat_body(deployment.model_id), headers=auth)
            assert answered.status_code == 200 and answered.json()["usage"]["total_tokens"] > 0
            streamed = client.post("/v1/chat/completions", json=chat_body(deployment.model_id, stream=True), headers=auth)
            assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
        events = UsageEvent.objects.filter(api_key=key).order_by("created_at")
        assert [(e.status_code, e.streamed, e.total_tokens > 0) for e in events] == [(200, False, True), (200, True, True)]
    finally:
        gateway.stop()
        demo.stop()
