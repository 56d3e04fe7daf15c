"""A lean SMTP sink for the latency-bound benchmarks: it holds each final-dot reply `delay` seconds.

Run as `python latency_sink.py DELAY`: it prints its port, serves 127.0.0.1 until its standard
input closes, then prints the number of messages it accepted.

Why not core/sink.py (aiosmtpd): on this 2-core machine the benchmark's sinks run beside the
senders and PostgreSQL, and aiosmtpd spends about 0.85 ms of CPU per message, so two of them took
three quarters of a core from the processes being measured (top, bench_fleet at ~900 msg/s). This
one is an asyncio protocol that only parses what a sink must (about a tenth of that). It speaks
the same SMTP: a greeting, EHLO with PIPELINING, 8BITMIME and ENHANCEDSTATUSCODES, MAIL, RCPT,
DATA, RSET, NOOP, QUIT, replies in order however far the client pipelines, dot-unstuffing not
needed (it keeps no message). Every reply but the final dot's is immediate.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

MAX_LINE = 1 << 16  # a command line longer than this is refused and the connection closed


class SinkProtocol(asyncio.Protocol):
    def __init__(self, delay: float, counter: list[int]) -> None:
        self.delay = delay
        self.counter = counter
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.in_data = False
        self.replies: deque[tuple[float, bytes, bool]] = deque()  # (time it may go, reply, close after), in order
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(b"220 127.0.0.1 ESMTP latency sink\r\n")  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    # keep only what could still hold the start of the terminator
                    self.buffer = self.buffer[-4:] if len(self.buffer) > 4 else self.buffer
                    return
                self.buffer = self.buffer[end + 5:]
                self.in_data = False
                self.counter[0] += 1
                self._reply(b"250 2.0.0 Ok: queued\r\n", self.delay)
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                if len(self.buffer) > MAX_LINE:
                    self.transport.write(b"500 5.5.0 line too long\r\n")
                    self.transport.close()
                return
            line, self.buffer = self.buffer[:end], self.buffer[end + 2:]
            self._command(line)

    def _command(self, line: bytes) -> None:
        verb = line[:4].upper()
        if verb == b"EHLO":
            self._reply(b"250-127.0.0.1\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n"
                        b"250 SIZE 104857600\r\n")
        elif verb == b"HELO":
            self._reply(b"250 127.0.0.1\r\n")
        elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
            self._reply(b"250 2.0.0 Ok\r\n")
        elif verb == b"DATA":
            self.in_data = True
            # A dot right after the 354 ends an empty message: let the loop look at it again.
            self.buffer = b"\r\n" + self.buffer
            self._reply(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        elif verb == b"QUIT":
            self._reply(b"221 2.0.0 Bye\r\n", close=True)
        else:
            self._reply(b"502 5.5.2 command not recognised\r\n")

    def _reply(self, text: bytes, delay: float = 0.0, *, close: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.replies.append((loop.time() + delay, text, close))
        self._flush()

    def _flush(self) -> None:
        """Writes every reply whose time has come, in order; a held reply holds those after it."""
        self.timer = None
        if self.transport is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        out = b""
        while self.replies and self.replies[0][0] <= now:
            _, text, close = self.replies.popleft()
            out += text
            if close:
                self.transport.write(out)
                self.transport.close()
                return
        if out:
            self.transport.write(out)
        if self.replies and self.timer is None:
            self.timer = loop.call_at(self.replies[0][0], self._flush)


async def serve(delay: float, sock: socket.socket, counter: list[int], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SinkProtocol(delay, counter), sock=sock, backlog=1024)
    async with server:
        await stop.wait()


class Started:
    """Sinks running in processes of their own: `ports`, and after the `with` block, `accepted`
    (messages each one accepted)."""

    def __init__(self, count: int, delay: float) -> None:
        self.procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(delay)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(count)]
        self.ports = [int(p.stdout.readline()) for p in self.procs]  # type: ignore[union-attr]
        self.accepted: list[int] = []

    def stop(self) -> None:
        for p in self.procs:
            p.stdin.close()  # type: ignore[union-attr]
        self.accepted = [int(p.stdout.read() or 0) for p in self.procs]  # type: ignore[union-attr]
        for p in self.procs:
            p.wait(timeout=30)


@contextlib.contextmanager
def started(count: int, delay: float) -> Iterator[Started]:
    sinks = Started(count, delay)
    try:
        yield sinks
    finally:
        sinks.stop()


def main() -> None:
    delay = float(sys.argv[1])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    try:
        import uvloop  # the sender's own loop; plain asyncio works too
        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    counter = [0]
    # Standard input closing is the signal to stop (the benchmark closes it; a dead benchmark too).
    threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)), daemon=True).start()
    loop.run_until_complete(serve(delay, sock, counter, stop))
    print(counter[0], flush=True)


if __name__ == "__main__":
    main()
