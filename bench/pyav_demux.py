"""PyAV's RTSP demuxer alone: the floor under any daemon built on it (a child process of ``bench_ingest``).

One process, one thread per camera, each opening its camera as the daemon does
(``streams.rtsp_source.open_options``: TCP, FFmpeg's socket timeout, the same probing limits; FFmpeg's
messages kept away from PyAV's log callback as ``nvr.base.logsetup`` does) and
reading packets with ``container.demux()`` without doing anything with them: no
read-timeout callback, no time model, no hub, no recorder.  What this costs is
what the daemon pays before it does any of its own work, so ``bench_ingest``
sets the daemon's phases beside it.

    python bench/pyav_demux.py URL [URL ...]

prints ``ready`` once every camera has given its first packet, then runs until
stdin closes or SIGTERM.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nvr.base.config import Ingest, LogLevel  # noqa: E402
from nvr.base.logsetup import setup  # noqa: E402
from streams.rtsp_source import open_options  # noqa: E402

OPTIONS = open_options(Ingest().read_timeout_seconds)  # the daemon's own, with its default read timeout


def demux(url: str, first: threading.Semaphore) -> None:
    with av.open(url, options=OPTIONS) as container:
        video = container.streams.video[0]
        started = False
        for _packet in container.demux(video):
            if not started:
                started = True
                first.release()


def main() -> None:
    setup(LogLevel.WARNING, LogLevel.ERROR)
    urls = sys.argv[1:]
    first = threading.Semaphore(0)
    for url in urls:
        threading.Thread(target=demux, args=(url, first), daemon=True).start()
    for _ in urls:
        if not first.acquire(timeout=120):
            sys.exit("a camera gave no packet within 120 s")
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes it (or ends this process)


if __name__ == "__main__":
    main()
