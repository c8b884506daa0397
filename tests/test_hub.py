"""Fan-out: every reader gets the same packets; a slow reader loses packets, never the others."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction

from streams import bitstream
from streams.hub import Hub, ReaderClosed
from streams.media import MediaPacket, Session, SessionEnded, TrackInfo, TrackKind

VIDEO = TrackInfo(kind=TrackKind.VIDEO, codec="h264", time_base=Fraction(1, 90000), width=640, height=360)


def session() -> Session:
    return Session(video=VIDEO, audio=None, started_at=time.time(), started_mono=time.monotonic())


def packet(sess: Session, n: int, key: bool) -> MediaPacket:
    return MediaPacket(
        session=sess, kind=TrackKind.VIDEO, data=bytes([n % 256]) * 10, pts=n * 3000, dts=n * 3000,
        time_base=Fraction(1, 90000), is_keyframe=key, received_at=time.time(), received_mono=time.monotonic(),
    )


def gop_stream(sess: Session, count: int, gop: int = 10) -> list[MediaPacket]:
    return [packet(sess, n, n % gop == 0) for n in range(count)]


async def test_every_reader_gets_the_same_packet_objects() -> None:
    hub = Hub("cam")
    a, b = hub.reader("recorder"), hub.reader("viewer")
    sent = gop_stream(session(), 30)
    for p in sent:
        hub.publish(p)
    got_a = [await a.get() for _ in sent]
    got_b = [await b.get() for _ in sent]
    assert all(x is y for x, y in zip(got_a, sent, strict=True))
    assert all(x is y for x, y in zip(got_b, sent, strict=True))


async def test_slow_reader_drops_and_resumes_on_keyframe_without_blocking_others() -> None:
    hub = Hub("cam", reader_queue_packets=16)
    slow, fast = hub.reader("slow"), hub.reader("fast")
    sess = session()
    received_fast = []
    for p in gop_stream(sess, 100):
        hub.publish(p)
        received_fast.append(await fast.get())  # the fast reader keeps up
    assert len(received_fast) == 100 and fast.dropped == 0
    assert slow.dropped == 100 - 16 and slow.queued == 16
    # Drain the slow reader; after its queue frees up it restarts on a keyframe only.
    for _ in range(16):
        await slow.get()
    more = [packet(sess, n, n % 10 == 0) for n in range(101, 125)]
    for p in more:
        hub.publish(p)
    first = await slow.get()
    assert isinstance(first, MediaPacket) and first.is_keyframe and first.pts == 110 * 3000


async def test_new_reader_starts_at_cached_keyframe() -> None:
    hub = Hub("cam")
    sess = session()
    for p in gop_stream(sess, 25):
        hub.publish(p)
    late = hub.reader("late")
    first = await late.get()
    assert isinstance(first, MediaPacket) and first.is_keyframe and first.pts == 20 * 3000
    assert late.queued == 4


async def test_session_end_reaches_even_a_full_reader_and_resets_cache() -> None:
    hub = Hub("cam", reader_queue_packets=16)
    reader = hub.reader("full")
    for p in gop_stream(session(), 40):
        hub.publish(p)
    hub.end_session("camera lost")
    items = [reader.get_nowait() for _ in range(17)]
    assert isinstance(items[-1], SessionEnded) and items[-1].reason == "camera lost"
    assert hub.reader("after").get_nowait() is None  # nothing cached from the dead session


async def test_close_wakes_a_waiting_reader() -> None:
    hub = Hub("cam")
    reader = hub.reader("waiting")
    task = asyncio.create_task(reader.get())
    await asyncio.sleep(0)
    reader.close()
    try:
        await asyncio.wait_for(task, 1)
        raise AssertionError("expected ReaderClosed")
    except ReaderClosed:
        pass
    assert reader not in hub.readers


def test_parameter_sets_deduplicated_and_stop_at_slice() -> None:
    sps, pps, idr = b"\x67\x42\xc0\x16\xda", b"\x68\xce\x3c\x80", b"\x65\x88\x84\x00\x33"
    au = b"".join(b"\x00\x00\x00\x01" + n for n in (b"\x09\xf0", sps, pps, sps, pps, idr, sps))
    assert bitstream.parameter_sets("h264", au) == b"\x00\x00\x00\x01" + sps + b"\x00\x00\x00\x01" + pps
    assert bitstream.has_slice("h264", au)
    assert not bitstream.has_slice("h264", b"\x00\x00\x00\x01\x09\xf0\x00\x00\x01" + sps)
    vps, hsps, hpps, irap = b"\x40\x01\x0c", b"\x42\x01\x01", b"\x44\x01\xc1", b"\x26\x01\xaf"
    hau = b"".join(b"\x00\x00\x01" + n for n in (vps, hsps, hpps, irap))
    assert bitstream.parameter_sets("hevc", hau).count(b"\x00\x00\x00\x01") == 3
    assert bitstream.has_slice("hevc", hau)


async def test_keyframes_only_reader_sees_keyframes_and_session_ends_only() -> None:
    hub = Hub("cam")
    pictures = hub.reader("health", keyframes_only=True)
    sess = session()
    for p in gop_stream(sess, 30):
        hub.publish(p)
    hub.end_session("camera lost")
    items = [pictures.get_nowait() for _ in range(4)]
    assert [i.pts for i in items[:3]] == [0, 10 * 3000, 20 * 3000]  # type: ignore[union-attr]
    assert isinstance(items[3], SessionEnded) and pictures.dropped == 0


class _Sink:
    """A thread-side consumer that records what it is fed and on which thread."""

    def __init__(self) -> None:
        self.items: list[object] = []
        self.threads: set[str] = set()

    def feed(self, item: object, raw: object) -> None:
        import threading

        self.items.append(item)
        self.threads.add(threading.current_thread().name)


async def test_fed_from_the_camera_thread_sinks_get_everything_and_the_loop_only_sampled_keyframes() -> None:
    import threading

    hub = Hub("cam")
    hub.loop = asyncio.get_running_loop()
    sink = _Sink()
    hub.add_sink(sink)  # type: ignore[arg-type]
    pictures = hub.reader("health", keyframes_only=True, every=1.0)
    sess = session()
    mono0 = time.monotonic()
    sent = [MediaPacket(session=sess, kind=TrackKind.VIDEO, data=bytes([n % 256]) * 10, pts=n * 3600,
                        dts=n * 3600, time_base=Fraction(1, 90000), is_keyframe=n % 10 == 0,
                        received_at=time.time(), received_mono=mono0 + n * 0.04) for n in range(100)]

    def camera_thread(packets: list[MediaPacket]) -> None:
        for p in packets:
            hub.feed(p)

    thread = threading.Thread(target=camera_thread, args=(sent[:60],), name="rtsp-cam")
    thread.start()
    thread.join()
    await asyncio.sleep(0.05)  # the batch is handed over with one loop wake-up
    assert sink.items == sent[:60] and sink.threads == {"rtsp-cam"}
    keyframes = []
    while (item := pictures.get_nowait()) is not None:
        keyframes.append(item)
    # A keyframe every 0.4 s of arrival time; the picture checks asked for one a second.
    assert [k.pts // 3600 for k in keyframes] == [0, 30]  # type: ignore[union-attr]
    assert hub.forwarded == 2

    # A live viewer attaches: it starts at the cached keyframe, then gets every packet, each once.
    viewer = hub.reader("viewer")
    thread = threading.Thread(target=camera_thread, args=(sent[60:],), name="rtsp-cam")
    thread.start()
    thread.join()
    await asyncio.sleep(0.05)
    seen = []
    while (item := viewer.get_nowait()) is not None:
        seen.append(item)
    assert seen[0] is sent[50] and seen == sent[50:]
    hub.remove_sink(sink)  # type: ignore[arg-type]
    hub.feed(sent[0])
    assert len(sink.items) == 100


async def test_a_new_session_crosses_to_the_loop_at_once_and_ends_the_old_one_for_readers() -> None:
    hub = Hub("cam")
    hub.loop = asyncio.get_running_loop()
    first, second = session(), session()
    viewer = hub.reader("viewer")
    for p in gop_stream(first, 5):
        hub.feed(p)
    hub.feed(packet(second, 0, True))
    await asyncio.sleep(0.05)
    items = [viewer.get_nowait() for _ in range(7)]
    assert isinstance(items[5], SessionEnded) and items[5].session is first
    assert isinstance(items[6], MediaPacket) and items[6].session is second and hub.session is second
