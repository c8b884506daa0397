"""The daemon's cap on glibc's malloc arenas (nvr/base/memory.py)."""

from __future__ import annotations

import platform

import pytest

from nvr.base import memory


def test_arenas_are_capped_on_glibc_unless_the_administrator_set_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert memory.limit_malloc_arenas() is (platform.libc_ver()[0] == "glibc")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert memory.limit_malloc_arenas() is False  # the environment's value stands
