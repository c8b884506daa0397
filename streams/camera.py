"""The streams of one configured camera: its main hub and source, and the live substream's when it has one.

Built once per camera by the station's wiring (:mod:`nvr.station`); read by
recording (the main hub), live view (:attr:`CameraStreams.view_hub`) and
health (the main source and hub).
"""

from __future__ import annotations

from dataclasses import dataclass

from nvr.base.config import Camera, Health, Ingest
from streams.hub import Hub
from streams.onvif import OnvifLink
from streams.rtsp_source import RtspSource


@dataclass(slots=True)
class CameraStreams:
    config: Camera
    hub: Hub
    source: RtspSource
    live_hub: Hub | None = None
    live_source: RtspSource | None = None
    onvif: OnvifLink | None = None  # the camera's ONVIF device service, when configured

    @property
    def view_hub(self) -> Hub:
        """The hub live viewers read: the substream when there is one."""
        return self.live_hub or self.hub

    @property
    def sources(self) -> tuple[RtspSource, ...]:
        return (self.source,) if self.live_source is None else (self.source, self.live_source)

    @classmethod
    def build(cls, camera: Camera, ingest: Ingest, health: Health) -> CameraStreams:
        hub = Hub(camera.id, reader_queue_packets=ingest.reader_queue_packets,
                  gop_cache_packets=ingest.gop_cache_packets)
        streams = cls(config=camera, hub=hub, source=RtspSource(camera.id, camera.url, hub, ingest=ingest,
                                                                  health=health))
        if camera.live_url:
            name = f"{camera.id}/live"
            streams.live_hub = Hub(name, reader_queue_packets=ingest.reader_queue_packets,
                                   gop_cache_packets=ingest.gop_cache_packets)
            streams.live_source = RtspSource(name, camera.live_url, streams.live_hub, ingest=ingest, health=health)
        if camera.onvif is not None:
            streams.onvif = OnvifLink(camera.id, camera.onvif, ingest)
        return streams

    def close(self) -> None:
        self.hub.close()
        if self.live_hub is not None:
            self.live_hub.close()
