"""Time-range search: a camera's timeline over a range, straight from the index (index thread).

The spans, gaps and their causes are :mod:`recorder.timeline`'s, the same as
coverage and exports use.  Causes come from the caller (the health layer knows
about outages and the daemon's runs), one list per camera.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from recorder.index import SegmentIndex
from recorder.timeline import Cause, Timeline, build

CauseSource = Callable[[str], Sequence[Cause]]


def search(index: SegmentIndex, camera: str, start: float, end: float,
           causes: CauseSource | None = None) -> Timeline:
    """Runs on the index thread."""
    return build(camera, start, end, index.segments(camera, start, end), causes(camera) if causes else ())
