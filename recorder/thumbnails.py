"""Thumbnails of the recorded footage: small JPEGs of the keyframes the picture checks already decode.

The health layer decodes one keyframe per camera every ``analyse_seconds``
for its picture checks (:mod:`nvr.health.camera`); :func:`jpeg_of` turns that
same decoded frame into a :data:`WIDTH`-pixel JPEG, so a thumbnail costs a
downscale and a JPEG encode, never a decode of its own.

They live on the recording storage, beside the footage they show::

    thumbnails/<camera>/<YYYYMMDDTHH>/<milliseconds since the epoch>.jpg

one directory per camera and UTC hour, so finding the nearest one to a time
lists at most three small directories and a day's strip lists 24.  No index
rows: the file name is the time.  Each file is written whole and renamed into
place (a reader never sees half a JPEG); thumbnails are expendable, so they
are not fsynced.

Bounded: at most one per ``analyse_seconds`` per recording camera, and
deleted with the footage they show: retention deletes a segment's
thumbnails with the segment (:meth:`ThumbnailStore.delete_between`) and an
hour of thumbnails older than the retention period once no footage of that
hour is left (:meth:`ThumbnailStore.expire`).  Footage under an evidence hold
is not deleted, and neither are its thumbnails.

Blocking file I/O throughout: callers run it in a thread.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import cv2
from av.video.frame import VideoFrame

log = logging.getLogger(__name__)

DIRECTORY = "thumbnails"
WIDTH = 320  # wide enough to recognise a scene on a timeline strip, about 10 kB
QUALITY = 70
_HOUR = 3600


def jpeg_of(frame: VideoFrame, width: int = WIDTH, quality: int = QUALITY) -> bytes:
    """A ``width``-pixel-wide JPEG of a decoded frame (its aspect kept)."""
    height = max(2, round(frame.height * width / frame.width / 2) * 2)
    bgr = frame.reformat(width=width, height=height, format="bgr24").to_ndarray()
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(data)


def _hour_name(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y%m%dT%H")


def _hour_start(at: float) -> float:
    return float(int(at // _HOUR) * _HOUR)


class ThumbnailStore:
    """The thumbnails under one storage root (stateless: any number of instances may share a root)."""

    def __init__(self, root: Path) -> None:
        self.dir = root / DIRECTORY

    def _camera_dir(self, camera: str) -> Path:
        if not camera or "/" in camera or camera.startswith("."):
            raise ValueError(f"not a camera id: {camera!r}")  # ids are validated by the config; never a path
        return self.dir / camera

    def put(self, camera: str, at: float, jpeg: bytes) -> Path:
        """Store the thumbnail of ``camera`` at ``at`` (UTC seconds)."""
        hour = self._camera_dir(camera) / _hour_name(at)
        hour.mkdir(parents=True, exist_ok=True)
        path = hour / f"{round(at * 1000)}.jpg"
        part = path.with_suffix(".part")
        part.write_bytes(jpeg)
        os.replace(part, path)
        return path

    def _hour(self, camera: str, hour_start: float) -> list[tuple[float, Path]]:
        directory = self._camera_dir(camera) / _hour_name(hour_start)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            stem, dot, ext = name.partition(".")
            if dot and ext == "jpg" and stem.isdigit():
                out.append((int(stem) / 1000, directory / name))
        out.sort()
        return out

    def _between(self, camera: str, start: float, end: float) -> Iterator[tuple[float, Path]]:
        hour = _hour_start(start)
        while hour < end:
            for at, path in self._hour(camera, hour):
                if start <= at < end:
                    yield at, path
            hour += _HOUR

    def between(self, camera: str, start: float, end: float) -> list[float]:
        """The times of ``camera``'s thumbnails in [start, end), oldest first."""
        return [at for at, _ in self._between(camera, start, end)]

    def nearest(self, camera: str, at: float, within: float) -> tuple[float, Path] | None:
        """The thumbnail nearest to ``at``, if one is within ``within`` seconds of it."""
        candidates = list(self._between(camera, at - within, at + within + 1e-3))
        if not candidates:
            return None
        return min(candidates, key=lambda item: (abs(item[0] - at), item[0]))

    def delete_between(self, camera: str, start: float, end: float) -> int:
        """Delete ``camera``'s thumbnails in [start, end) (with the footage they show)."""
        deleted = 0
        for _at, path in list(self._between(camera, start, end)):
            try:
                path.unlink()
                deleted += 1
            except FileNotFoundError:
                pass
        hour = _hour_start(start)
        while hour < end:
            self._remove_if_empty(self._camera_dir(camera) / _hour_name(hour))
            hour += _HOUR
        return deleted

    def expire(self, cutoff: float, has_footage: Callable[[str, float, float], bool]) -> int:
        """Delete every hour of thumbnails that ended before ``cutoff`` and of which no footage is left."""
        deleted = 0
        try:
            cameras = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return 0
        for camera in cameras:
            try:
                hours = sorted(os.listdir(self.dir / camera))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in hours:
                try:
                    start = datetime.strptime(name, "%Y%m%dT%H").replace(tzinfo=UTC).timestamp()
                except ValueError:
                    continue
                if start + _HOUR > cutoff or has_footage(camera, start, start + _HOUR):
                    continue
                for _at, path in self._hour(camera, start):
                    path.unlink(missing_ok=True)
                    deleted += 1
                self._remove_if_empty(self.dir / camera / name)
        return deleted

    @staticmethod
    def _remove_if_empty(directory: Path) -> None:
        try:
            for leftover in directory.glob("*.part"):
                if time.time() - leftover.stat().st_mtime > 60:
                    leftover.unlink(missing_ok=True)  # a write torn by a crash
            directory.rmdir()
        except OSError:
            pass  # not empty, or gone
