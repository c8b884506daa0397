"""The simulated camera's network: a TCP relay in front of one of its ports that a test can cut and restore.

What the NVR sees of a camera goes through this relay; the camera itself (its
encoder, its SD card) does not, so cutting the relay is a network outage, not
a camera failure.  While cut, connections open through the relay are reset
and new ones are accepted but never answered (as a dead link looks to a
client: its request times out); on :meth:`NetworkRelay.restore` those are
closed and the relay forwards again.  :meth:`NetworkRelay.hold_media` is the
other failure: an encoder hung behind a live RTSP stack.  The connection stays
up and the camera's RTSP answers and RTCP still come, but the RTP media
interleaved on the connection (even channels, RFC 2326 10.12) is dropped
until :meth:`NetworkRelay.release_media`.  Runs on a thread of its own with its
own event loop, so synchronous test code can drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class NetworkRelay:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.host, self.port = host, port
        self.cut_now = False
        self.media_held = False
        self.held_frames = 0  # interleaved media frames dropped while held
        self.passed_rtcp = 0  # interleaved RTCP frames passed while media was held
        self.connections = 0  # relayed connections opened, for tests
        self.closed = 0  # relayed connections ended (by either side)
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._held: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"net-relay:{target_port}", daemon=True)

    def start(self) -> NetworkRelay:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the network relay did not start")
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in (*self._open, *self._held):
                writer.transport.abort()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def cut(self) -> None:
        """The link goes dead: open connections are reset, new ones hang unanswered."""
        def go() -> None:
            self.cut_now = True
            for writer in list(self._open):
                writer.transport.abort()
        self._call(go)

    def restore(self) -> None:
        def go() -> None:
            self.cut_now = False
            for writer in list(self._held):
                writer.transport.abort()
        self._call(go)

    def hold_media(self) -> None:
        self.media_held = True

    def release_media(self) -> None:
        self.media_held = False

    def _call(self, fn: object) -> None:
        done = threading.Event()

        def run() -> None:
            try:
                fn()  # type: ignore[operator]
            finally:
                done.set()
        self._loop.call_soon_threadsafe(run)
        done.wait(5)

    # -- its loop -------------------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._client, self.host, self.port))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_now:
            self._held.add(writer)
            try:
                while await reader.read(65536):
                    pass  # swallowed: nothing comes back over a dead link
            except (ConnectionError, OSError):
                pass
            finally:
                self._held.discard(writer)
                writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(_pipe(reader, up_writer), self._from_camera(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._open.discard(w)
                w.transport.abort()
            self.closed += 1


    async def _from_camera(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Camera to client: RTSP messages and interleaved frames, whole, media dropped while held."""
        with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
            while True:
                first = await reader.readexactly(1)
                if first == b"$":
                    head = await reader.readexactly(3)
                    frame = first + head + await reader.readexactly(int.from_bytes(head[1:], "big"))
                    if self.media_held:
                        if head[0] % 2 == 0:
                            self.held_frames += 1
                            continue
                        self.passed_rtcp += 1
                else:  # an RTSP message: its head, then its body
                    frame = first + await reader.readuntil(b"\r\n\r\n")
                    length = next((int(line.split(b":", 1)[1]) for line in frame.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), 0)
                    frame += await reader.readexactly(length)
                writer.write(frame)
                await writer.drain()
        writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()
