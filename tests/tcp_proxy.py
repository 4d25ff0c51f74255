"""A TCP proxy that can cut every connection: a database outage between a gateway and PostgreSQL.

    python -m tests.tcp_proxy --target-port 5432 --port 0

Prints `listening <port>` once ready. SIGUSR1 cuts: every open connection is closed at once and
new ones are accepted and closed straight away (the client sees "server closed the
connection"). SIGUSR2 restores forwarding. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys


class Proxy:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.cut = False
        self.writers: set[asyncio.StreamWriter] = set()
        self.cuts = 0
        self.refused = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self.writers.discard(writer)
            self.writers.discard(up_writer)

    def cut_all(self) -> None:
        self.cut = True
        self.cuts += 1
        for w in list(self.writers):
            w.transport.abort()
        self.writers.clear()
        print("cut", flush=True)

    def restore(self) -> None:
        self.cut = False
        print("restored", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--target-host", default="127.0.0.1")
    parser.add_argument("--target-port", type=int, default=5432)
    args = parser.parse_args()
    proxy = Proxy(args.target_host, args.target_port)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", args.port)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, proxy.cut_all)
    loop.add_signal_handler(signal.SIGUSR2, proxy.restore)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("listening", server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await stop.wait()
    sys.exit(0)


if __name__ == "__main__":
    asyncio.run(main())
