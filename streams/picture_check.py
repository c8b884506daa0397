"""Picture checks of one camera: is the lens covered, the picture blurred, the camera turned away, the picture frozen?

Works on decoded keyframes only, downscaled to ``analysis_width`` grey pictures
first, so the cost per camera is a keyframe decode and a few small OpenCV
passes every ``analyse_seconds``.  :func:`decode_keyframe` and
:meth:`PictureCheck.analyse` are blocking and are run in a thread by the
caller (:mod:`nvr.health.camera`); nothing here touches the event loop.

Measures, each chosen to ignore what a normal scene does (people walking,
light changing gradually):

- *covered*: mean luma (dark) or luma standard deviation (uniform: sprayed,
  taped, pointed at a wall) below a threshold;
- *blurred*: sharpness (variance of the Laplacian, normalised by the picture's
  own variance so that lighting does not move it) far below the baseline
  learned with the reference view;
- *moved*: correlation of a coarse, smoothed edge map with the reference
  view's. Edges are where the building is; they do not move with brightness,
  and walking people change only a small part of the map;
- *frozen*: successive analysed keyframes identical to within coding noise:
  almost no pixel changes by more than ``_CHANGE_LEVEL`` luma levels (coding
  noise of a re-encoded still picture stays well below that; a timestamp
  overlay or anyone moving exceeds it).

Decisions are per analysis; debouncing into alarms is the caller's job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import av
import av.error
import cv2
import numpy as np
from av.video.frame import VideoFrame
from av.video.reformatter import VideoReformatter

from nvr.base.config import PictureChecks

log = logging.getLogger(__name__)

# The edge map is compared at this width: coarse enough that camera shake and
# people do not matter, fine enough that a turned camera does.
_EDGE_WIDTH = 64
# A pixel "changed" when its luma moved by more than this (coding noise does not).
_CHANGE_LEVEL = 10


class Condition(StrEnum):
    COVERED = "covered"
    BLURRED = "blurred"
    MOVED = "moved"
    FROZEN = "frozen"


@dataclass(frozen=True, slots=True)
class Findings:
    """One analysed keyframe: the measures and the conditions they meet."""

    brightness: float
    contrast: float
    sharpness: float
    similarity: float | None  # None while the reference is being learned
    change: float | None  # percent of pixels changed since the last analysis; None for the first
    conditions: frozenset[Condition] = field(default_factory=frozenset)
    learning: bool = False

    def details(self) -> dict[str, float | None]:
        return {
            "brightness": round(self.brightness, 2),
            "contrast": round(self.contrast, 2),
            "sharpness": round(self.sharpness, 4),
            "similarity": None if self.similarity is None else round(self.similarity, 3),
            "change": None if self.change is None else round(self.change, 3),
        }


def decode_frame(codec: str, extradata: bytes, data: bytes) -> VideoFrame | None:
    """Decode one keyframe on a fresh decoder (or None).

    A fresh decoder per keyframe costs well under a millisecond and means no
    decoder state (reference frames, threads waiting for more input) is ever
    carried between the sparse keyframes we feed.
    """
    try:
        decoder: Any = av.CodecContext.create(codec, "r")  # a VideoCodecContext; the stubs say CodecContext
        if extradata:
            decoder.extradata = extradata
        decoder.thread_count = 1
        frames = decoder.decode(av.Packet(data))
        if not frames:
            frames = decoder.decode(None)
    except av.error.FFmpegError:
        log.debug("cannot decode a %s keyframe", codec, exc_info=True)
        return None
    if not frames:
        return None
    frame: VideoFrame = frames[-1]
    return frame


def gray_of(frame: VideoFrame, width: int, reformatter: VideoReformatter | None = None) -> np.ndarray:
    """The frame's luma downscaled to ``width``.

    A ``reformatter`` kept by the caller keeps FFmpeg's scaler set up between
    keyframes of one camera (setting it up for a 1080p source costs a good
    part of the downscale).
    """
    height = max(2, round(frame.height * width / frame.width))
    if reformatter is not None:
        gray = reformatter.reformat(frame, width=width, height=height, format="gray").to_ndarray()
    else:
        gray = frame.reformat(width=width, height=height, format="gray").to_ndarray()
    return np.ascontiguousarray(gray)


def decode_keyframe(codec: str, extradata: bytes, data: bytes, width: int,
                    reformatter: VideoReformatter | None = None) -> np.ndarray | None:
    """Decode one keyframe on a fresh decoder; return its luma downscaled to ``width`` (or None)."""
    frame = decode_frame(codec, extradata, data)
    return gray_of(frame, width, reformatter) if frame is not None else None


class PictureCheck:
    """Learns a camera's reference view and judges each analysed picture against it. Not thread-safe."""

    def __init__(self, thresholds: PictureChecks) -> None:
        self.thresholds = thresholds
        self._learning: list[tuple[np.ndarray, float]] = []
        self.reference: np.ndarray | None = None
        self.baseline_sharpness: float | None = None
        self._previous: np.ndarray | None = None

    def relearn(self) -> None:
        """Forget the reference view; the next good pictures become the new one."""
        self._learning.clear()
        self.reference = None
        self.baseline_sharpness = None

    def new_session(self) -> None:
        """The stream was interrupted: the next picture is not compared with the last one."""
        self._previous = None

    @property
    def learned(self) -> bool:
        return self.reference is not None

    def analyse(self, gray: np.ndarray) -> Findings:
        t = self.thresholds
        small = gray.astype(np.float32)
        previous = self._previous
        brightness = float(small.mean())
        contrast = float(small.std())
        sharpness = _sharpness(small, contrast)
        change = None
        if previous is not None and previous.shape == small.shape:
            change = 100.0 * float(np.count_nonzero(np.abs(small - previous) > _CHANGE_LEVEL)) / small.size
        self._previous = small

        conditions: set[Condition] = set()
        if brightness < t.covered_brightness or contrast < t.covered_contrast:
            # A blank picture is also unchanging, unsharp and unlike the
            # reference: report only what the technician has to fix.
            conditions.add(Condition.COVERED)
            return Findings(brightness, contrast, sharpness, None, change, frozenset(conditions), not self.learned)
        if change is not None and change < t.frozen_changed_percent:
            conditions.add(Condition.FROZEN)

        edges = _edge_map(small)
        if self.reference is None or self.reference.shape != edges.shape:
            if Condition.FROZEN not in conditions:
                self._learn(edges, sharpness)
            return Findings(brightness, contrast, sharpness, None, change, frozenset(conditions), True)

        similarity = _correlation(edges, self.reference)
        assert self.baseline_sharpness is not None
        if sharpness < self.baseline_sharpness * t.blur_ratio:
            conditions.add(Condition.BLURRED)
        elif similarity < t.moved_similarity:
            conditions.add(Condition.MOVED)
        return Findings(brightness, contrast, sharpness, similarity, change, frozenset(conditions))

    def _learn(self, edges: np.ndarray, sharpness: float) -> None:
        if self._learning and self._learning[0][0].shape != edges.shape:
            self._learning.clear()
        self._learning.append((edges, sharpness))
        if len(self._learning) >= self.thresholds.learn_keyframes:
            self.reference = np.mean([e for e, _ in self._learning], axis=0).astype(np.float32)
            self.baseline_sharpness = float(np.median([s for _, s in self._learning]))
            self._learning.clear()


def _sharpness(small: np.ndarray, contrast: float) -> float:
    """Laplacian variance over picture variance: high-frequency share of the detail."""
    if contrast <= 0:
        return 0.0
    laplacian = cv2.Laplacian(small, cv2.CV_32F, ksize=3)
    return float(laplacian.var() / (contrast * contrast))


def _edge_map(small: np.ndarray) -> np.ndarray:
    height = max(2, round(small.shape[0] * _EDGE_WIDTH / small.shape[1]))
    coarse = cv2.resize(small, (_EDGE_WIDTH, height), interpolation=cv2.INTER_AREA)
    gx = cv2.Sobel(coarse, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(coarse, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = cv2.magnitude(gx, gy)
    return cv2.GaussianBlur(magnitude, (5, 5), 0)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0
