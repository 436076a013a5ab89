"""Streaming latency that wrk cannot see: time to the first SSE event, and whether chunks are
relayed as they arrive.

- :func:`measure_ttfb`: sequential streaming requests on one keep-alive connection (concurrency
  1); for each, the time from sending the request to the first byte of the response *body*
  (the first ``data:`` event), and to the end of the stream.
- The trickling upstream (``python -m benchmarks.ttfb trickle --port P``): an asyncio server
  answering every POST with an SSE stream of ``--chunks`` events spaced ``--gap-ms`` apart
  (nginx's static files cannot space them). :func:`measure_relay` reads such a stream directly
  and through the router and compares each event's arrival time: a router that buffers shows
  its events bunched at the end.

The client is a plain blocking socket speaking HTTP/1.1 (Content-Length or chunked), so it
costs the same for both sides and adds no event-loop jitter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["Response", "StreamClient", "measure_relay", "measure_ttfb", "serve_trickle"]


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    first_body_at: float  # perf_counter of the first body byte
    done_at: float
    event_times: list[float]  # perf_counter when each "data:" event's first byte arrived


class StreamClient:
    """One persistent HTTP/1.1 connection to 127.0.0.1:``port``."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port, self.timeout = port, timeout
        self.sock: socket.socket | None = None
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.buf = b""

    def _connect(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.sock

    def _recv(self) -> bytes:
        assert self.sock is not None
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed by the server")
        return data

    def post(self, path: str, body: bytes, on_body: Any = None) -> tuple[Response, float]:
        """Send one POST; returns the response and the perf_counter at which it was sent.
        ``on_body(now, data)`` is called for every piece of body data as it arrives."""
        sock = self._connect()
        req = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nAccept: text/event-stream\r\n\r\n").encode() + body
        sent = time.perf_counter()
        sock.sendall(req)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        body_parts: list[bytes] = []
        events: list[float] = []
        first: list[float] = []
        pending = b""  # to spot "data:" at line starts across reads

        def got(now: float, data: bytes) -> None:
            nonlocal pending
            if not data:
                return
            if not first:
                first.append(now)
            text = pending + data
            start = len(pending)
            idx = text.find(b"data:")
            while idx != -1:
                if idx + 5 > start and (idx == 0 or text[idx - 1:idx] == b"\n"):
                    events.append(now)
                idx = text.find(b"data:", idx + 1)
            pending = text[-6:]
            body_parts.append(data)
            if on_body is not None:
                on_body(now, data)

        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                while b"\r\n" not in self.buf:
                    self.buf += self._recv()
                size_line, _, self.buf = self.buf.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    self.buf += self._recv()
                got(time.perf_counter(), self.buf[:size])
                self.buf = self.buf[size + 2:]
                if size == 0:
                    break
        else:
            remaining = int(headers.get("content-length", "0"))
            while remaining > 0:
                if not self.buf:
                    self.buf = self._recv()
                piece, self.buf = self.buf[:remaining], self.buf[remaining:]
                got(time.perf_counter(), piece)
                remaining -= len(piece)
        done = time.perf_counter()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Response(status, headers, b"".join(body_parts), first[0] if first else done, done, events), sent


def measure_ttfb(port: int, path: str, body: bytes, n: int) -> dict[str, Any]:
    """``n`` sequential streaming requests on one connection (after 20 warm-up ones): the
    median and p90 time to the first body byte and to the end of the stream, in ms."""
    client = StreamClient(port)
    try:
        for _ in range(20):
            client.post(path, body)
        first, total = [], []
        for _ in range(n):
            resp, sent = client.post(path, body)
            if resp.status != 200:
                raise RuntimeError(f"streaming request to :{port}{path} answered {resp.status}: {resp.body[:300]!r}")
            first.append((resp.first_body_at - sent) * 1000)
            total.append((resp.done_at - sent) * 1000)
    finally:
        client.close()
    q = statistics.quantiles
    return {"n": n, "first_byte_ms_p50": round(statistics.median(first), 3),
            "first_byte_ms_p90": round(q(first, n=10)[-1], 3),
            "stream_ms_p50": round(statistics.median(total), 3)}


def measure_relay(direct_port: int, direct_path: str, iir_port: int, iir_path: str, body: bytes,
                  chunks: int, gap_ms: float) -> dict[str, Any]:
    """Arrival time of each SSE event of a trickled stream, directly and through the router."""
    out: dict[str, Any] = {"chunks": chunks, "gap_ms": gap_ms}
    for name, port, path in (("direct", direct_port, direct_path), ("iir", iir_port, iir_path)):
        client = StreamClient(port, timeout=30)
        try:
            client.post(path, body)  # warm the connections and the router's upstream pool
            resp, sent = client.post(path, body)
        finally:
            client.close()
        if resp.status != 200:
            raise RuntimeError(f"trickle request to {name} answered {resp.status}: {resp.body[:300]!r}")
        out[name] = [round((t - sent) * 1000, 2) for t in resp.event_times]
    d, i = out["direct"], out["iir"]
    if len(d) != len(i):
        out["verdict"] = f"event count differs: direct {len(d)}, iir {len(i)}"
        out["met"] = False
        return out
    delays = [b - a for a, b in zip(d, i, strict=True)]
    out["added_ms_per_event"] = [round(x, 2) for x in delays]
    out["max_added_ms"] = round(max(delays), 2)
    # Buffering would hold early events back by up to (chunks - 1) * gap; relaying as they
    # arrive keeps every event within a small constant of its direct arrival time.
    out["met"] = max(delays) < gap_ms / 2
    out["verdict"] = ("relayed as they arrive" if out["met"]
                      else f"events held back (up to {max(delays):.1f} ms): buffering?")
    return out


# --- the trickling upstream -------------------------------------------------------------

def _trickle_event(i: int, last: bool) -> bytes:
    delta: dict[str, str] = {} if last else ({"role": "assistant", "content": ""} if i == 0 else {"content": f" w{i}"})
    return b"data: " + orjson.dumps({
        "id": "chatcmpl-trickle", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "bench-trickle",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": "stop" if last else None}],
    }) + b"\n\n"


async def serve_trickle(port: int, chunks: int, gap_ms: float) -> None:
    """Serve SSE streams whose events are ``gap_ms`` apart, until cancelled."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
                for i in range(chunks):
                    if i:
                        await asyncio.sleep(gap_ms / 1000)
                    ev = _trickle_event(i, i == chunks - 1)
                    writer.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                    await writer.drain()
                done = b"data: [DONE]\n\n"
                writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ttfb")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("trickle", help="serve trickled SSE streams on 127.0.0.1:PORT")
    t.add_argument("--port", type=int, required=True)
    t.add_argument("--chunks", type=int, default=6)
    t.add_argument("--gap-ms", type=float, default=40.0)
    t.add_argument("--lifetime", type=float, default=1800.0, help="exit after this many seconds")
    args = ap.parse_args(argv)

    async def run() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(serve_trickle(args.port, args.chunks, args.gap_ms), args.lifetime)
    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
