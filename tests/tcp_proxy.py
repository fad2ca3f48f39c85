"""A TCP proxy between one MQTT client (the agent) and the broker that can break the link.

asyncio on a background thread; the test thread drives it through thread-safe methods:

- ``bytes_down`` / ``bytes_up``: bytes forwarded broker -> client and client -> broker (what the
  agent really received, retransmissions included);
- ``flap_at(thresholds)``: abort every connection (both sides, RST) each time ``bytes_down``
  crosses the next threshold; ``flap()`` does it now; ``flaps`` counts them;
- ``corrupt_publishes(n, min_size)``: flip the last byte (payload data) of the next ``n`` MQTT
  PUBLISH packets toward the client whose remaining length is at least ``min_size`` (a chunk,
  not a command). The downstream byte stream is split into whole MQTT packets for this, so a
  mutation can never break the framing; upstream bytes are copied as they come.

The proxy speaks no MQTT beyond the fixed header (type nibble + variable-length remaining
length), so it sees exactly what a broken router or a flaky link would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable

log = logging.getLogger(__name__)

PUBLISH = 3


def _packet_length(buf: bytearray) -> int | None:
    """Total length of the MQTT packet at the start of ``buf``, or None if incomplete."""
    multiplier, value = 1, 0
    for pos in range(1, min(len(buf), 5)):
        byte = buf[pos]
        value += (byte & 0x7F) * multiplier
        if not byte & 0x80:
            return 1 + pos + value
        multiplier *= 128
    if len(buf) >= 5:
        raise ValueError("malformed MQTT remaining length")
    return None


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self.bytes_down = 0
        self.bytes_up = 0
        self.connections = 0
        self.flaps = 0
        self.corrupted = 0
        self.publishes_down = 0  # PUBLISH packets toward the client
        self.redelivered_down = 0  # of which the broker re-sent (DUP flag set)
        self.redelivered_bytes = 0
        self._thresholds: list[int] = []
        self._corrupt_left = 0
        self._corrupt_min = 0
        self._conns: set[_Conn] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tcp-proxy", daemon=True
        )
        self._lock = threading.Lock()

    # ---- control (any thread) -------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> TcpProxy:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        fut.result(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            self._abort_all()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def flap_at(self, thresholds: Iterable[int]) -> None:
        with self._lock:
            self._thresholds = sorted(thresholds)

    def flap(self) -> None:
        self._loop.call_soon_threadsafe(self._flap_now)

    def corrupt_publishes(self, n: int = 1, min_size: int = 1024) -> None:
        with self._lock:
            self._corrupt_left, self._corrupt_min = n, min_size

    # ---- the event loop side ----------------------------------------------------------------
    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def _abort_all(self) -> None:
        for conn in list(self._conns):
            conn.abort()
        self._conns.clear()

    def _flap_now(self) -> None:
        if self._conns:
            self.flaps += 1
            log.info("proxy: flap %d at %d bytes down", self.flaps, self.bytes_down)
        for conn in list(self._conns):
            conn.cut()

    async def _client(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            b_reader, b_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.transport.abort()
            return
        self.connections += 1
        conn = _Conn(c_writer, b_writer)
        self._conns.add(conn)
        up = asyncio.ensure_future(self._pipe_up(c_reader, conn))
        down = asyncio.ensure_future(self._pipe_down(b_reader, conn))
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if conn.cutting:  # let the client read what it was sent, then see the end
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(up), 5)
        for task in (up, down):
            task.cancel()
        conn.abort()
        self._conns.discard(conn)

    async def _pipe_up(self, reader: asyncio.StreamReader, conn: _Conn) -> None:
        while data := await reader.read(65536):
            self.bytes_up += len(data)
            if not conn.cutting:  # after a cut, what the client sends is lost on the way
                conn.broker.write(data)
                await conn.broker.drain()

    async def _pipe_down(self, reader: asyncio.StreamReader, conn: _Conn) -> None:
        buf = bytearray()
        writer = conn.client
        while not conn.cutting and (data := await reader.read(65536)):
            buf += data
            while (n := _packet_length(buf)) is not None and len(buf) >= n:
                packet, buf = buf[:n], buf[n:]
                if packet[0] >> 4 == PUBLISH:
                    self.publishes_down += 1
                    if packet[0] & 0x08:
                        self.redelivered_down += 1
                        self.redelivered_bytes += n
                self._maybe_corrupt(packet)
                writer.write(bytes(packet))
                self.bytes_down += n
                if self._crossed_threshold():
                    self._flap_now()
                    break
            await writer.drain()

    def _maybe_corrupt(self, packet: bytearray) -> None:
        with self._lock:
            if self._corrupt_left <= 0 or packet[0] >> 4 != PUBLISH:
                return
            if len(packet) < self._corrupt_min:
                return
            self._corrupt_left -= 1
        packet[-1] ^= 0xFF
        self.corrupted += 1
        log.info("proxy: corrupted a %d-byte PUBLISH", len(packet))

    def _crossed_threshold(self) -> bool:
        with self._lock:
            if self._thresholds and self.bytes_down >= self._thresholds[0]:
                while self._thresholds and self.bytes_down >= self._thresholds[0]:
                    self._thresholds.pop(0)
                return True
        return False


class _Conn:
    """One proxied connection. A cut (a flap) drops the broker side at once (RST: what the
    broker had sent and the proxy not yet forwarded is lost, as on a dead link) and ends the
    client side after the bytes already forwarded (FIN), so ``bytes_down`` counts exactly what
    the client could read."""

    def __init__(self, client: asyncio.StreamWriter, broker: asyncio.StreamWriter) -> None:
        self.client, self.broker = client, broker
        self.cutting = False

    def cut(self) -> None:
        if self.cutting:
            return
        self.cutting = True
        with contextlib.suppress(Exception):
            self.broker.transport.abort()
        with contextlib.suppress(Exception):
            self.client.write_eof()

    def abort(self) -> None:
        for w in (self.broker, self.client):
            with contextlib.suppress(Exception):
                w.transport.abort()
