"""nvr.base.logsetup: FFmpeg's messages reach the log through the redacting handler, without PyAV's callback."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

from nvr.base import logsetup
from tests.conftest import REPO

SCRIPT = textwrap.dedent("""
    import os, time, av, av.logging
    from nvr.base import logsetup
    logsetup.setup("info", "warning")
    # FFmpeg's own message: a decoder fed junk says so at error level.
    decoder = av.CodecContext.create("h264", "r")
    try:
        decoder.decode(av.Packet(b"\\\\x00\\\\x00\\\\x00\\\\x01\\\\x65" + os.urandom(2000)))
    except av.error.FFmpegError:
        pass
    # Any C library writing to fd 2 with a password in a URL.
    os.write(2, b"[rtsp @ 0x1] rtsp://admin:hunter2@10.0.0.21/Streaming failed\\n")
    time.sleep(0.5)
    print("done", flush=True)
""")


def test_ffmpeg_and_c_library_messages_reach_the_log_redacted_through_the_pipe() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "done" in out.stdout
    lines = out.stderr.splitlines()
    relayed = [line for line in lines if " libav: " in line]
    assert any(line.endswith("libav: [rtsp @ 0x1] rtsp://admin:***@10.0.0.21/Streaming failed")
               for line in relayed), out.stderr
    assert "hunter2" not in out.stderr
    # FFmpeg's own, through its default printer, at FFmpeg's level (an error, above the configured warning),
    # the level tag it printed taken off; a line without one (another C library) at the configured level.
    assert any(" ERROR libav: [h264 @ " in line for line in relayed), out.stderr
    assert not any("[error]" in line for line in relayed), out.stderr
    assert any(" WARNING libav: [rtsp @ 0x1] rtsp://" in line for line in relayed), out.stderr


def test_a_printed_line_keeps_ffmpegs_level_and_loses_its_tag_and_colours() -> None:
    assert logsetup._record(b"[h264 @ 0x55d0] [warning] mmco: unref short failure") == (
        logging.WARNING, "[h264 @ 0x55d0] mmco: unref short failure")
    # A message with its parent's context before its own ("[rtsp @ 0x1] [h264 @ 0x2]"), in terminal colours.
    assert logsetup._record(b"\x1b[0;31m[rtsp @ 0x1] [h264 @ 0x2] [error] no frame!\x1b[0m") == (
        logging.ERROR, "[rtsp @ 0x1] [h264 @ 0x2] no frame!")
    assert logsetup._record(b"[info] Stream #0") == (logging.INFO, "Stream #0")
    # Only the tag where FFmpeg's printer puts it is taken; level words after it are text.
    level, text = logsetup._record(b"[warning] [fake] x [error] y")
    assert (level, text) == (logging.WARNING, "[fake] x [error] y")
    assert logsetup._record(b"continued text without a prefix")[1] == "continued text without a prefix"
