"""streams.read_interrupt: PyAV's read timeout switched off while a session streams, and a read ended from outside."""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import av
import av.error
import pytest

from streams.read_interrupt import ReadInterrupt, timeout_offset


def _container(tmp_path: Path) -> av.container.InputContainer:
    raw = tmp_path / "silence.raw"
    raw.write_bytes(bytes(1 << 20))  # read through FFmpeg's file protocol, which checks the interrupt callback
    container = av.open(str(raw), format="s16le", timeout=(5.0, 5.0))
    assert isinstance(container, av.container.InputContainer)
    return container


def test_the_timeout_is_found_in_the_pinned_pyav_and_relaxing_switches_it_off(tmp_path: Path) -> None:
    offset = timeout_offset()
    assert offset is not None  # else every camera's reads pay PyAV's callback again (see the module docstring)
    container = _container(tmp_path)
    try:
        packets = container.demux()
        next(packets)
        timeout = ctypes.c_double.from_address(id(container) + offset)
        assert timeout.value == 5.0  # PyAV's read timeout, as it set it
        reads = ReadInterrupt(container)
        assert reads.available and reads.relax() and timeout.value == -1.0
        for _ in range(10):
            next(packets)  # reads go on without a timeout
    finally:
        container.close()


def test_an_interrupt_ends_the_next_read_and_a_later_relax_does_not_undo_it(tmp_path: Path) -> None:
    container = _container(tmp_path)
    try:
        packets = container.demux()
        next(packets)
        reads = ReadInterrupt(container)
        reads.relax()
        # From another thread, as the source's loop does when it ends a session.
        thread = threading.Thread(target=reads.interrupt)
        thread.start()
        thread.join()
        assert not reads.relax()  # an interrupt stays
        with pytest.raises(av.error.ExitError):
            for _ in range(100):
                next(packets)
    finally:
        container.close()


def test_where_the_layout_is_unknown_pyav_keeps_its_own_read_timeout(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import streams.read_interrupt as module

    monkeypatch.setattr(module, "timeout_offset", lambda: None)
    container = _container(tmp_path)
    try:
        packets = container.demux()
        next(packets)
        reads = ReadInterrupt(container)
        assert not reads.available and not reads.relax()
        reads.interrupt()  # nothing written: PyAV's own timeout bounds the read
        next(packets)
    finally:
        container.close()
