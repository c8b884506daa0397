"""The daemon's glibc malloc arena limit (nvr/base/memory.py)."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from nvr.base import memory


def test_each_camera_thread_gets_an_arena_of_its_own() -> None:
    # A demux and a disk thread per camera, a demux thread per substream, and the daemon's shared threads.
    assert memory.arenas_for(64) > 2 * 64
    assert memory.arenas_for(64, substreams=64) > 3 * 64
    assert memory.arenas_for(0) > 0


def test_the_limit_is_set_on_glibc_unless_the_administrator_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert memory.set_malloc_arenas(memory.arenas_for(4)) is (platform.libc_ver()[0] == "glibc")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert memory.set_malloc_arenas(2) is False  # the environment's value stands


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's arenas")
@pytest.mark.parametrize("limit", [2, 24])
def test_threads_that_allocate_at_once_get_as_many_arenas_as_the_limit_allows(limit: int) -> None:
    # In a process of its own: arenas, once made, stay for the life of a process.  glibc's malloc_info
    # lists one <heap> per arena; 16 threads allocating at the same time need 16 besides the main one.
    script = textwrap.dedent(f"""
        import ctypes, os, re, tempfile, threading
        from nvr.base import memory
        assert memory.set_malloc_arenas({limit})
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = (ctypes.c_void_p,)
        barrier = threading.Barrier(16)
        def allocate():
            barrier.wait()
            blocks = [libc.malloc(20000) for _ in range(2000)]
            for block in blocks:
                libc.free(block)
        threads = [threading.Thread(target=allocate) for _ in range(16)]
        for t in threads: t.start()
        for t in threads: t.join()
        libc.fopen.restype = ctypes.c_void_p
        libc.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
        libc.fclose.argtypes = (ctypes.c_void_p,)
        libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
        path = tempfile.mktemp()
        f = libc.fopen(path.encode(), b"w")
        libc.malloc_info(0, f)
        libc.fclose(f)
        print(len(re.findall(r"<heap nr=", open(path).read())))
        os.unlink(path)
    """)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "."}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    # glibc gives each new thread an arena of its own while the limit allows: with 2, the 16 threads share
    # the main arena and one more (and wait for each other's locks); with 24, each has its own.
    assert int(out.stdout.strip()) == min(limit, 16 + 1)
