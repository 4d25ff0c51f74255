"""gateway/resp.py, the gateway's pipelining Redis client: against the real Redis (REDIS_URL) and,
for what a healthy Redis never does (stalls, exact bytes on the wire), a local RESP server."""

from __future__ import annotations

import asyncio
import os

import pytest

from gateway import resp
from gateway.resp import PipelinedRedis, RedisError, ReplyError, _Parser, encode
from lib.redis import redis_client
from tests.gateway_support import LoopbackServer, run_async


def redis_url() -> str:
    return os.environ["REDIS_URL"]


class RespServer(LoopbackServer):
    """A RESP server on 127.0.0.1 that records every command and every read it got, and answers
    with `reply(command)` (None: never answer)."""

    def __init__(self, reply):
        super().__init__()
        self.reply = reply
        self.commands: list[list[bytes]] = []
        self.reads: list[bytes] = []

    async def serve(self, reader, writer):
        parser = _Parser()
        try:
            while data := await reader.read(65536):
                self.reads.append(data)
                parser.feed(data)
                while True:
                    try:
                        command = parser.next()
                    except IndexError:
                        break
                    self.commands.append(command)
                    answer = self.reply(command)
                    if answer is not None:
                        writer.write(answer)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def test_replies_come_back_to_their_commands_in_order_under_pipelining():
    async def scenario():
        client = PipelinedRedis(redis_url())
        prefix = f"gatehouse:test:resp:{os.getpid()}"
        await client.execute("DEL", f"{prefix}:n")
        # 300 commands issued in one event-loop turn: one write, replies matched FIFO.
        results = await asyncio.gather(
            *(client.execute("INCR", f"{prefix}:n") if i % 3 == 0 else client.execute("ECHO", f"value-{i}") for i in range(300))
        )
        await client.execute("DEL", f"{prefix}:n")
        await client.aclose()
        return results

    results = run_async(scenario())
    expected = [(i // 3 + 1) if i % 3 == 0 else f"value-{i}".encode() for i in range(300)]
    assert results == expected


def test_a_command_issued_in_one_turn_goes_out_in_one_write():
    async def scenario():
        async with RespServer(lambda command: b"+PONG\r\n") as server:
            client = PipelinedRedis(f"redis://127.0.0.1:{server.port}/0")
            await client.execute("PING")  # connect first
            server.reads.clear()
            replies = await asyncio.gather(*(client.execute("PING") for _ in range(50)))
            await client.aclose()
            return replies, server.reads

    replies, reads = run_async(scenario())
    assert replies == [b"PONG"] * 50
    assert b"".join(reads) == encode(("PING",)) * 50
    assert len(reads) == 1


def test_an_error_reply_fails_its_own_command_only():
    async def scenario():
        client = PipelinedRedis(redis_url())
        key = f"gatehouse:test:resp:{os.getpid()}:text"
        await client.execute("SET", key, "not a number")
        results = await asyncio.gather(
            client.execute("ECHO", "before"), client.execute("INCR", key), client.execute("ECHO", "after"), return_exceptions=True
        )
        await client.execute("DEL", key)
        await client.aclose()
        return results

    before, failed, after = run_async(scenario())
    assert (before, after) == (b"before", b"after")
    assert isinstance(failed, ReplyError) and "not an integer" in str(failed)


def test_a_flushed_script_cache_falls_back_to_eval():
    async def scenario():
        client = PipelinedRedis(redis_url())
        script = "return {ARGV[1], tonumber(ARGV[2]) + 1}"
        first = await client.evalsha(script, [], ["a", 41])
        await client.execute("SCRIPT", "FLUSH")  # as after a Redis restart
        second = await client.evalsha(script, [], ["b", 1])
        await client.aclose()
        return first, second

    assert run_async(scenario()) == ([b"a", 42], [b"b", 2])


def test_it_reconnects_after_its_connection_is_killed_and_selects_its_database_again():
    key = f"gatehouse:test:resp:{os.getpid()}:reconnect"

    async def scenario():
        client = PipelinedRedis(redis_url())
        own_id = await client.execute("CLIENT", "ID")
        redis_client().execute_command("CLIENT", "KILL", "ID", own_id)
        outcomes = []
        for _ in range(2):  # the first command may still meet the dead connection
            try:
                outcomes.append(await client.execute("SET", key, "again"))
            except RedisError:
                outcomes.append("failed")
            if outcomes[-1] == b"OK":
                break
        new_id = await client.execute("CLIENT", "ID")
        await client.aclose()
        return outcomes, own_id, new_id

    outcomes, own_id, new_id = run_async(scenario())
    assert outcomes[-1] == b"OK" and outcomes.count("failed") <= 1
    assert new_id != own_id
    assert redis_client().get(key) == b"again"  # in REDIS_URL's database, where redis_client() reads
    redis_client().delete(key)


def test_auth_and_select_are_sent_on_connect():
    async def scenario():
        async with RespServer(lambda command: b"+OK\r\n") as server:
            client = PipelinedRedis(f"redis://gate%40house:p%3Ass@127.0.0.1:{server.port}/7")
            assert await client.execute("PING") == b"OK"
            await client.aclose()
            return server.commands

    assert run_async(scenario()) == [[b"AUTH", b"gate@house", b"p:ss"], [b"SELECT", b"7"], [b"PING"]]


def test_a_redis_that_stops_answering_fails_the_waiting_commands():
    async def scenario():
        async with RespServer(lambda command: None) as server:
            client = PipelinedRedis(f"redis://127.0.0.1:{server.port}/0", timeout=0.2)
            with pytest.raises(RedisError):
                await client.execute("PING")
            await client.aclose()

    run_async(scenario())


def test_a_lazy_command_rides_the_next_write_or_goes_out_on_its_own():
    async def scenario():
        async with RespServer(lambda command: b"+OK\r\n") as server:
            client = PipelinedRedis(f"redis://127.0.0.1:{server.port}/0")
            await client.execute("PING")
            server.reads.clear()
            client.fire("return 1", [], [], lazy=True)
            await asyncio.sleep(0)  # the fire task queues its command
            await asyncio.sleep(0)
            assert server.reads == []  # nothing written for it yet
            assert await client.execute("PING") == b"OK"
            together = list(server.reads)
            server.reads.clear()
            client.fire("return 2", [], [], lazy=True)
            for _ in range(200):  # alone, it goes out within LAZY_FLUSH
                if server.reads:
                    break
                await asyncio.sleep(resp.LAZY_FLUSH)
            alone = list(server.reads)
            await client.aclose()
            return together, alone

    together, alone = run_async(scenario())
    assert len(together) == 1 and together[0].startswith(b"*3\r\n$7\r\nEVALSHA") and together[0].endswith(encode(("PING",)))
    assert len(alone) == 1 and alone[0].startswith(b"*3\r\n$7\r\nEVALSHA")


@pytest.mark.parametrize(
    "wire, value",
    [
        (b":42\r\n", 42),
        (b"+OK\r\n", b"OK"),
        (b"$-1\r\n", None),
        (b"*-1\r\n", None),
        (b"$0\r\n\r\n", b""),
        (b"$5\r\na\r\nbc\r\n", b"a\r\nbc"),
        (b"*2\r\n*2\r\n:1\r\n$1\r\nx\r\n*0\r\n", [[1, b"x"], []]),
    ],
)
def test_the_parser_reads_each_reply_type_whole_and_byte_by_byte(wire, value):
    assert parse_whole(wire) == value
    parser = _Parser()
    for i in range(len(wire) - 1):
        parser.feed(wire[i : i + 1])
        with pytest.raises(IndexError):
            parser.next()
    parser.feed(wire[-1:])
    assert parser.next() == value


def test_an_error_reply_is_returned_as_an_error_not_raised():
    parser = _Parser()
    parser.feed(b"-ERR unknown command\r\n:1\r\n")
    error = parser.next()
    assert isinstance(error, ReplyError) and str(error) == "ERR unknown command"
    assert parser.next() == 1


def parse_whole(wire: bytes):
    parser = _Parser()
    parser.feed(wire)
    return parser.next()
