"""A TCP proxy that delays what the client sends by a fixed time: a server that far away, for a command run in its
own process (`bench/common.LatencyTransport` delays only the requests of this process's httpx clients).

    python bench/delayproxy.py --upstream 127.0.0.1:8103 --delay-ms 20     # prints the port it listens on

Every chunk from the client is forwarded `delay` after it arrived (a delay line: chunks keep their order and
spacing, so a large body is not delayed once per chunk); answers come back at once. So each request and its
answer take `delay` more, as over a link with that round trip. asyncio, in a process of its own (started by
`DelayProxy`), so it does not share the interpreter of the benchmark that measures through it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
from types import TracebackType


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        loop = asyncio.get_running_loop()
        while True:
            at, data = await line.get()
            if not data:
                break
            if (wait := at + delay - loop.time()) > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while data := await reader.read(65536):
            line.put_nowait((asyncio.get_running_loop().time(), data))
    finally:
        line.put_nowait((0.0, b""))
        with contextlib.suppress(Exception):
            await sender
        with contextlib.suppress(Exception):
            writer.close()


async def _serve(upstream: tuple[str, int], delay: float) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*upstream)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pump(client_r, server_w, delay), _pump(server_r, client_w, 0.0),
                             return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=256)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


class DelayProxy:
    """The proxy in a process of its own, in front of `upstream` ("http://host:port/"): `url` is where to send."""

    def __init__(self, upstream: str, delay: float) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(upstream)
        self.upstream = f"{parts.hostname}:{parts.port or 80}"
        self.delay = delay
        self.path = parts.path or "/"
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> DelayProxy:
        self._proc = subprocess.Popen([sys.executable, __file__, "--upstream", self.upstream, "--delay-ms",
                                       str(self.delay * 1000)], stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        port = int(self._proc.stdout.readline())
        self.url = f"http://127.0.0.1:{port}{self.path}"
        time.sleep(0.1)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="host:port")
    parser.add_argument("--delay-ms", type=float, default=20.0)
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve((host, int(port)), args.delay_ms / 1000))


if __name__ == "__main__":
    main()
