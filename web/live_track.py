"""A WebRTC track that sends a camera's packets as they are.

``recv()`` returns encoded ``av.Packet``s: aiortc's sender then only splits
them into RTP packets (H.264 FU-A/STAP-A, G.711 as is) and never decodes or
encodes.  End of stream is aiortc's ``MediaStreamError``.
"""

from __future__ import annotations

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from web.live_feed import FeedClosed, LiveFeed


class LiveTrack(MediaStreamTrack):
    """The video or audio half of one viewer's :class:`LiveFeed`."""

    def __init__(self, feed: LiveFeed, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.feed = feed

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        try:
            if self.kind == "video":
                return await self.feed.next_video()
            return await self.feed.next_audio()
        except FeedClosed:
            self.stop()
            raise MediaStreamError from None
