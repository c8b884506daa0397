"""A man-in-the-middle for RTSP over TCP that damages the media, for robustness tests.

It relays the RTSP dialogue untouched. Once interleaved data flows
(``$``, channel, 16-bit length, RTP packet), it corrupts the payload of some
RTP packets, truncates others, and inserts RTP packets of random bytes.
The camera URL's host:port is rewritten in RTSP text so the session stays
consistent.
"""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass


@dataclass
class Damage:
    corrupted: int = 0
    truncated: int = 0
    inserted: int = 0


class LoopbackServer:
    """A TCP server on 127.0.0.1 with an event loop on a thread of its own; subclasses define ``_client``."""

    def __init__(self, name: str) -> None:
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10)

    def stop(self) -> None:
        async def cancel_clients() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_clients(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class RtspMangler(LoopbackServer):
    def __init__(self, target_port: int, every: int = 40, seed: int = 7) -> None:
        super().__init__("rtsp-mangler")
        self.target_port = target_port
        self.every = every
        self.rng = random.Random(seed)
        self.damage = Damage()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        ours, theirs = f"127.0.0.1:{self.port}".encode(), f"127.0.0.1:{self.target_port}".encode()
        await asyncio.gather(
            self._pipe_text(reader, up_writer, ours, theirs),
            self._pipe_media(up_reader, writer, theirs, ours),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            w.close()

    async def _pipe_text(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, old: bytes,
                         new: bytes) -> None:
        """Client to camera: RTSP requests (and RTCP), addresses rewritten."""
        while data := await reader.read(65536):
            writer.write(data.replace(old, new))
            await writer.drain()

    async def _pipe_media(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, old: bytes,
                          new: bytes) -> None:
        """Camera to client: RTSP replies rewritten, interleaved RTP damaged now and then."""
        count = 0
        while True:
            first = await reader.read(1)
            if not first:
                return
            if first != b"$":
                line = first + await reader.readuntil(b"\r\n\r\n")
                length = 0
                for header in line.split(b"\r\n"):
                    if header.lower().startswith(b"content-length:"):
                        length = int(header.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                if body:
                    body = body.replace(old, new)
                    line = line.replace(f"Content-Length: {length}".encode(), f"Content-Length: {len(body)}".encode())
                writer.write(line.replace(old, new) + body)
                await writer.drain()
                continue
            header = await reader.readexactly(3)
            channel, size = header[0], int.from_bytes(header[1:3], "big")
            packet = bytearray(await reader.readexactly(size))
            count += 1
            if channel % 2 == 0 and size > 40 and count % self.every == 0:
                kind = count // self.every % 3
                if kind == 0:  # flip bytes in the payload: a damaged NAL unit
                    for _ in range(8):
                        packet[self.rng.randrange(20, size)] ^= 0xFF
                    self.damage.corrupted += 1
                elif kind == 1:  # cut the packet short: a truncated NAL unit
                    packet = packet[: size // 3]
                    self.damage.truncated += 1
                else:  # a packet of random bytes with a valid RTP-looking header
                    junk = bytes([0x80, 0x60]) + self.rng.randbytes(200)
                    writer.write(b"$" + bytes([channel]) + len(junk).to_bytes(2, "big") + junk)
                    self.damage.inserted += 1
            writer.write(b"$" + bytes([channel]) + len(packet).to_bytes(2, "big") + bytes(packet))
            await writer.drain()
