"""Prometheus metrics of one station, in a registry of its own (never the global one).

The numbers are owned by the components that know them (sources, readers,
recorders, retention, health, webhooks) and kept there as plain attributes;
this collector reads them at scrape time, so no hot path pays for metrics.
Every configured camera has every per-camera series from the start (0 until
there is something to count).  Labels carry camera ids only, never URLs, so
no credential can reach a scrape.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nvr.base.config import Config
from nvr.health.alarms import CAMERA_ALARMS, STORAGE_ALARMS
from nvr.health.monitor import HealthMonitor
from nvr.recording import RecordingService
from recorder.archive import ArchiveCollector
from recorder.backfill import BackfillCollector
from recorder.bodycam import BodycamCollector
from streams.camera import CameraStreams
from streams.rtsp_source import SourceState


class Measured(Protocol):
    """What the collector reads of the station (declared here: the station imports this module)."""

    @property
    def config(self) -> Config: ...

    @property
    def cameras(self) -> Mapping[str, CameraStreams]: ...

    @property
    def health(self) -> HealthMonitor: ...

    @property
    def recording(self) -> RecordingService: ...

    @property
    def started_at(self) -> float: ...

class StationCollector(Collector):
    def __init__(self, station: Measured) -> None:
        self.station = station

    def collect(self) -> Iterator[Metric]:
        station = self.station
        health, recorded = station.health, station.recording
        up = GaugeMetricFamily("nvr_camera_up", "1 while the camera's main stream delivers packets", labels=["camera"])
        # Join on camera to route alerts by zone (holding cells first) and show names.
        info = GaugeMetricFamily(
            "nvr_camera_info", "Always 1: the camera's zone and name", labels=["camera", "zone", "name"]
        )
        last = GaugeMetricFamily(
            "nvr_camera_last_packet_timestamp_seconds",
            "Wall-clock time of the last packet (0: none yet)",
            labels=["camera"],
        )
        fps = GaugeMetricFamily("nvr_camera_fps", "Video frames per second (media time)", labels=["camera"])
        bitrate = GaugeMetricFamily("nvr_camera_bitrate_bits_per_second", "Received bit rate", labels=["camera"])
        reconnects = CounterMetricFamily("nvr_camera_reconnects", "Reconnect attempts", labels=["camera"])
        packets = CounterMetricFamily("nvr_camera_packets", "Packets received", labels=["camera"])
        received = CounterMetricFamily("nvr_camera_received_bytes", "Bytes received", labels=["camera"])
        garbage = CounterMetricFamily(
            "nvr_camera_invalid_packets", "Corrupt or invalid packets dropped", labels=["camera"]
        )
        state_since = GaugeMetricFamily(
            "nvr_camera_state_changed_timestamp_seconds", "When the connection state last changed", labels=["camera"]
        )
        segments = CounterMetricFamily("nvr_recording_segments", "Segments written and indexed", labels=["camera"])
        written = CounterMetricFamily("nvr_recording_bytes", "Bytes of segments written", labels=["camera"])
        recording = GaugeMetricFamily("nvr_recording_up", "1 while packets reach a segment file", labels=["camera"])
        recording_enabled = GaugeMetricFamily(
            "nvr_recording_enabled", "1 if the camera is configured to record", labels=["camera"]
        )
        alarms_open = GaugeMetricFamily("nvr_alarms_open", "Open alarms (0 or 1)", labels=["camera", "type"])
        alarms_total = CounterMetricFamily("nvr_alarms_opened", "Alarms opened since start", labels=["camera", "type"])
        analyses = CounterMetricFamily("nvr_health_analyses", "Keyframes decoded and analysed", labels=["camera"])
        substream_analyses = CounterMetricFamily(
            "nvr_health_substream_analyses", "Of those, keyframes of the substream (live_url)", labels=["camera"]
        )
        analysis_cpu = CounterMetricFamily(
            "nvr_health_analysis_cpu_seconds",
            "Thread CPU time spent decoding and analysing keyframes",
            labels=["camera"],
        )

        store = health.alarms
        for camera_id, runtime in station.cameras.items():
            status = runtime.source.status()
            up.add_metric([camera_id], 1.0 if status.state is SourceState.ONLINE else 0.0)
            info.add_metric([camera_id, runtime.config.zone.value, runtime.config.name], 1.0)
            last.add_metric([camera_id], status.last_packet_at or 0.0)
            fps.add_metric([camera_id], status.fps)
            bitrate.add_metric([camera_id], status.bitrate_bps)
            reconnects.add_metric([camera_id], status.reconnects)
            packets.add_metric([camera_id], status.packets)
            received.add_metric([camera_id], status.bytes)
            garbage.add_metric([camera_id], status.garbage_packets)
            state_since.add_metric([camera_id], status.changed_at)
            recorder = recorded.recorders.get(camera_id)
            segments.add_metric([camera_id], recorder.core.segments_written if recorder else 0)
            written.add_metric([camera_id], recorder.core.bytes_written if recorder else 0)
            recording.add_metric([camera_id], 1.0 if recorder is not None and recorder.recording else 0.0)
            recording_enabled.add_metric([camera_id], 1.0 if runtime.config.record else 0.0)
            for kind in CAMERA_ALARMS:
                alarms_open.add_metric([camera_id, kind.value], 1.0 if store.is_open(camera_id, kind) else 0.0)
                alarms_total.add_metric([camera_id, kind.value], store.opened_total.get((camera_id, kind), 0))
            camera_health = health.cameras.get(camera_id)
            analyses.add_metric([camera_id], camera_health.analyses if camera_health else 0)
            substream_analyses.add_metric([camera_id], camera_health.substream_analyses if camera_health else 0)
            analysis_cpu.add_metric([camera_id], camera_health.analysis_seconds if camera_health else 0.0)
        for station_kind in STORAGE_ALARMS:
            alarms_open.add_metric(["", station_kind.value], 1.0 if store.is_open(None, station_kind) else 0.0)
            alarms_total.add_metric(["", station_kind.value], store.opened_total.get((None, station_kind), 0))

        dropped = CounterMetricFamily(
            "nvr_reader_dropped_packets", "Packets a slow reader lost", labels=["camera", "reader"]
        )
        for (camera_id, reader), count in sorted(health.reader_drops.items()):
            dropped.add_metric([camera_id, reader], count)
        for camera_id, recorder in sorted(recorded.recorders.items()):
            dropped.add_metric([camera_id, f"recorder:{camera_id}"], recorder.core.dropped)

        yield from (
            up,
            info,
            last,
            fps,
            bitrate,
            reconnects,
            packets,
            received,
            garbage,
            state_since,
            segments,
            written,
            recording,
            recording_enabled,
            alarms_open,
            alarms_total,
            dropped,
            analyses,
            substream_analyses,
            analysis_cpu,
        )

        storage_ok = GaugeMetricFamily("nvr_storage_ok", "1 if the storage was accepted and recording can run")
        storage_ok.add_metric([], 1.0 if recorded.index is not None else 0.0)
        free = GaugeMetricFamily("nvr_storage_free_bytes", "Free bytes on the recording storage")
        total = GaugeMetricFamily("nvr_storage_size_bytes", "Size of the recording storage")
        free_bytes, total_bytes = health.storage_space
        free.add_metric([], free_bytes)
        total.add_metric([], total_bytes)
        warn = GaugeMetricFamily("nvr_storage_free_warning_ratio", "Configured 'disk nearly full' threshold (0..1)")
        warn.add_metric([], station.config.health.storage_free_warning_percent / 100.0)
        full = GaugeMetricFamily("nvr_storage_disk_full", "1 while only protected footage is left on a full disk")
        storage = recorded.status()
        full.add_metric([], 1.0 if storage.disk_full else 0.0)
        deleted = CounterMetricFamily("nvr_retention_deleted_segments", "Segments deleted by retention or pressure")
        deleted.add_metric([], storage.deleted_total)
        yield from (storage_ok, free, total, warn, full, deleted)

        hooks_delivered = CounterMetricFamily("nvr_webhook_deliveries", "Alarm changes delivered", labels=["webhook"])
        hooks_failed = CounterMetricFamily("nvr_webhook_failures", "Alarm changes given up on", labels=["webhook"])
        hooks_dropped = CounterMetricFamily(
            "nvr_webhook_dropped", "Alarm changes dropped: queue full", labels=["webhook"]
        )
        hooks_queued = GaugeMetricFamily("nvr_webhook_queue_length", "Alarm changes waiting", labels=["webhook"])
        for index, sender in enumerate(health.webhooks):
            label = [str(index)]
            hooks_delivered.add_metric(label, sender.delivered)
            hooks_failed.add_metric(label, sender.failed)
            hooks_dropped.add_metric(label, sender.dropped)
            hooks_queued.add_metric(label, sender.queued)
        yield from (hooks_delivered, hooks_failed, hooks_dropped, hooks_queued)

        started = GaugeMetricFamily("nvr_start_time_seconds", "When the daemon started")
        started.add_metric([], station.started_at)
        yield started
        yield from _onvif_metrics(health)
        if recorded.archiver is not None:
            yield from ArchiveCollector(recorded.archiver).collect()
        if recorded.bodycams is not None:
            yield from BodycamCollector(recorded.bodycams).collect()
        if recorded.backfill is not None:
            yield from BackfillCollector(recorded.backfill).collect()


def _onvif_metrics(health: HealthMonitor) -> Iterator[Metric]:
    """The cameras' ONVIF links: the camera's clock offset, link state, the events it raised."""
    offset = GaugeMetricFamily("nvr_camera_clock_offset_seconds",
                               "The camera's clock minus the station's (ONVIF), as last measured", labels=["camera"])
    link_up = GaugeMetricFamily("nvr_camera_onvif_up", "1 while the camera's ONVIF link is online", labels=["camera"])
    events = CounterMetricFamily("nvr_camera_onvif_events", "Events the camera raised, by kind",
                                 labels=["camera", "kind"])
    for camera_id, onvif in health.onvif.items():
        status = onvif.link.status()
        if status.clock_offset_seconds is not None:
            offset.add_metric([camera_id], status.clock_offset_seconds)
        link_up.add_metric([camera_id], 1.0 if status.state.value == "online" else 0.0)
        for kind, count in onvif.events.items():
            events.add_metric([camera_id, kind], count)
    yield from (offset, link_up, events)


def build_registry(station: Measured) -> CollectorRegistry:
    """The station's own registry (never the global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StationCollector(station))
    return registry
