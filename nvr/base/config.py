"""The daemon's configuration: parsed once at start, fully validated, frozen.

Loading goes in three steps:

1. YAML is read into plain data, remembering the line of every key so that
   each error can name ``file:line: yaml.path``.
2. ``${NAME}`` references are replaced by the environment variable NAME or,
   failing that, by the file NAME in systemd's ``$CREDENTIALS_DIRECTORY``.
   A value substituted into the user-info part of a URL is percent-encoded
   for it, so a raw password such as ``Pa55@w:rd%21!`` works as written.
   Every password that ends up in a URL is registered with :mod:`nvr.base.secrets`.
3. The data is validated by frozen pydantic models that forbid unknown keys.

All problems are collected and raised together as :class:`ConfigError`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
import zoneinfo
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nvr.base import secrets

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Keys whose substituted values are secrets even outside a URL.
_SECRET_KEY = re.compile(r"(password|passwd|secret|token)", re.IGNORECASE)


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` holds one message per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _absolute(value: Path) -> Path:
    if not value.is_absolute():
        raise ValueError("must be an absolute path")
    return value


# A path in the config is absolute: the daemon's working directory is nobody's business.
AbsolutePath = Annotated[Path, AfterValidator(_absolute)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Zone(StrEnum):
    HALL = "hall"
    ENTRANCE = "entrance"
    CORRIDOR = "corridor"
    HOLDING_CELL = "holding_cell"
    OTHER = "other"


class Station(_Model):
    id: Annotated[str, Field(pattern=r"^[a-z0-9-]+$", max_length=64, description="Station id")]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    timezone: str = Field(
        default="UTC", description="IANA time zone every human-readable time is shown in (machine fields stay UTC)"
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Asia/Tehran)") from exc
        return value


class Storage(_Model):
    path: AbsolutePath = Field(default=Path("/var/lib/nvr"), description="Root of recordings and the index")
    segment_seconds: Annotated[int, Field(ge=2, le=3600)] = 60
    retention_days: Annotated[int, Field(ge=1, le=3650)] = 30
    min_free_percent: Annotated[float, Field(ge=0, le=90)] = 5.0
    drift_tolerance_seconds: Annotated[float, Field(gt=0, le=3600)] = 5.0
    retention_check_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    id: str | None = Field(default=None, description="Pin the storage marker id (printed by nvr init-storage)")


class Tls(_Model):
    cert: Path = Field(description="PEM certificate chain")
    key: Path = Field(description="PEM private key")

    @field_validator("cert", "key")
    @classmethod
    def _readable_file(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value


class WebLimits(_Model):
    """What HTTP clients may take of the daemon: connections, descriptors and time (``web.limits``)."""

    max_connections: Annotated[
        int, Field(ge=1, le=1_000_000, description="Open HTTP connections in all (also bounded by the descriptors)")
    ] = 1024
    max_connections_per_address: Annotated[
        int, Field(ge=1, le=1_000_000, description="Open HTTP connections from one client address")
    ] = 64
    header_timeout_seconds: Annotated[
        float, Field(gt=0, le=300, description="A connection's first request headers (and TLS handshake) within this")
    ] = 10.0
    body_timeout_seconds: Annotated[
        float, Field(gt=0, le=3600, description="A request body within this after its headers; else 408")
    ] = 30.0
    keepalive_timeout_seconds: Annotated[
        float, Field(gt=0, le=3600, description="An idle keep-alive connection closes after this")
    ] = 15.0
    fd_reserve: Annotated[
        int, Field(ge=16, le=1_000_000, description="Descriptors HTTP connections never take (recording, databases)")
    ] = 256
    fd_reserve_per_camera: Annotated[
        int, Field(ge=0, le=10_000, description="... and this many more per camera stream")
    ] = 16
    log_interval_seconds: Annotated[
        float, Field(gt=0, le=86400, description="Refused connections are logged at most once per interval")
    ] = 60.0


class Web(_Model):
    listen: str = Field(default="127.0.0.1:8080", description="host:port of the HTTP server")
    tls: Tls | None = Field(default=None, description="Serve HTTPS (TLS 1.2+) with this certificate and key")
    hsts_seconds: Annotated[int, Field(ge=0, le=2 * 365 * 86400, description="HSTS max-age under TLS")] = 31536000
    metrics_public: bool = Field(default=False, description="Serve /metrics without a token")
    limits: WebLimits = Field(default_factory=WebLimits, description="Connection and request limits")
    max_event_streams: Annotated[
        int, Field(ge=1, le=10_000, description="Open event feeds (SSE) in all; more answer 503")
    ] = 64
    max_event_streams_per_user: Annotated[
        int, Field(ge=1, le=10_000, description="Open event feeds per user or token; more answer 429")
    ] = 8

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, port = split_host_port(value)
        if not host:
            raise ValueError("must be host:port, e.g. 127.0.0.1:8080")
        if not 1 <= port <= 65535:
            raise ValueError("port must be between 1 and 65535")
        return value

    @property
    def host(self) -> str:
        return split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.listen)[1]

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


# A 1080p keyframe costs about ten times a 640x360 one to decode; the substream shows the same scene.
AnalyseStream = Literal["auto", "main"]


class PictureChecks(_Model):
    """Tamper and picture thresholds; set globally under ``health:``, overridden per camera."""

    analyse_seconds: Annotated[float, Field(ge=0.5, le=300, description="Analyse one keyframe this often")] = 3.0
    analysis_width: Annotated[int, Field(ge=64, le=1920, description="Keyframes are downscaled to this width")] = 320
    learn_keyframes: Annotated[int, Field(ge=1, le=100, description="Keyframes that form the reference view")] = 3
    open_after: Annotated[int, Field(ge=1, le=100, description="Consecutive bad analyses that open an alarm")] = 2
    close_after: Annotated[int, Field(ge=1, le=100, description="Consecutive good analyses that close it")] = 2
    covered_brightness: Annotated[float, Field(ge=0, le=255, description="Mean luma below this is covered")] = 22.0
    covered_contrast: Annotated[float, Field(ge=0, le=128, description="Luma std-dev below this is covered")] = 6.0
    blur_ratio: Annotated[float, Field(gt=0, lt=1, description="Sharpness below this share of baseline")] = 0.25
    moved_similarity: Annotated[float, Field(ge=-1, le=1, description="Edge correlation with the reference")] = 0.45
    frozen_changed_percent: Annotated[
        float, Field(ge=0, le=100, description="Fewer pixels than this % changing between analyses: frozen")
    ] = 0.05
    min_fps: Annotated[float, Field(ge=0, le=240, description="Frame rate below this is low_fps; 0: off")] = 1.0
    analyse_stream: AnalyseStream = Field(
        default="auto",
        description="Which stream's keyframes the picture checks decode: 'auto' (the substream, live_url, while it"
                    " is online, else the main stream) or 'main' (always the recorded stream)",
    )


class Health(PictureChecks):
    stall_seconds: Annotated[float, Field(gt=0, le=300)] = 5.0
    recording_stall_seconds: Annotated[
        float, Field(gt=0, le=3600, description="Online but nothing written for this long: recording_stalled")
    ] = 30.0
    storage_free_warning_percent: Annotated[
        float, Field(ge=0, le=100, description="Exported for the 'disk nearly full' alert rule")
    ] = 10.0
    clock_tolerance_seconds: Annotated[
        float, Field(gt=0, le=3600, description="A camera clock (ONVIF) further off than this: clock_drift")
    ] = 2.0

    def for_camera(self, overrides: CameraHealth | None) -> PictureChecks:
        """The camera's effective thresholds: the global ones with its overrides applied."""
        values = {name: getattr(self, name) for name in PictureChecks.model_fields}
        if overrides is not None:
            values.update(overrides.model_dump(exclude_none=True))
        return PictureChecks(**values)


class CameraHealth(_Model):
    """Per-camera overrides of :class:`PictureChecks`; unset keys take the global value."""

    analyse_seconds: Annotated[float, Field(ge=0.5, le=300)] | None = None
    analysis_width: Annotated[int, Field(ge=64, le=1920)] | None = None
    learn_keyframes: Annotated[int, Field(ge=1, le=100)] | None = None
    open_after: Annotated[int, Field(ge=1, le=100)] | None = None
    close_after: Annotated[int, Field(ge=1, le=100)] | None = None
    covered_brightness: Annotated[float, Field(ge=0, le=255)] | None = None
    covered_contrast: Annotated[float, Field(ge=0, le=128)] | None = None
    blur_ratio: Annotated[float, Field(gt=0, lt=1)] | None = None
    moved_similarity: Annotated[float, Field(ge=-1, le=1)] | None = None
    frozen_changed_percent: Annotated[float, Field(ge=0, le=100)] | None = None
    min_fps: Annotated[float, Field(ge=0, le=240)] | None = None
    analyse_stream: AnalyseStream | None = None


class Webhook(_Model):
    url: str = Field(description="http(s) URL that receives alarm open/close as JSON POSTs")
    token: str | None = Field(default=None, description="Sent as 'Authorization: Bearer <token>'")
    timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 5.0

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        check_http_url(value)
        return value


class Alerts(_Model):
    webhooks: list[Webhook] = Field(default_factory=list)
    queue_size: Annotated[int, Field(ge=1, le=100_000, description="Pending deliveries per webhook")] = 1000
    retry_initial_seconds: Annotated[float, Field(gt=0, le=600)] = 1.0
    retry_max_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 10


class Backoff(_Model):
    """Capped exponential backoff between reconnection attempts."""

    backoff_initial_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    backoff_max_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0

    @model_validator(mode="after")
    def _backoff_order(self) -> Backoff:
        if self.backoff_max_seconds < self.backoff_initial_seconds:
            raise ValueError("backoff_max_seconds must be >= backoff_initial_seconds")
        return self


class Ingest(Backoff):
    open_timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 10.0
    read_timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 10.0
    probe_interval_seconds: Annotated[float, Field(
        ge=0.2, le=60, description="While a camera is unreachable, probe it (RTSP OPTIONS) this often")] = 0.5
    probe_timeout_seconds: Annotated[float, Field(gt=0, le=30, description="Bound of one probe")] = 1.0
    reader_queue_packets: Annotated[int, Field(ge=16, le=100_000)] = 600
    gop_cache_packets: Annotated[int, Field(ge=16, le=100_000)] = 1200


class LiveTranscode(StrEnum):
    """What a camera's live view does with a stream browsers cannot play (H.265)."""

    OFF = "off"  # refuse it (409 h265_needs_transcode) and say so on the tile
    H264 = "h264"  # decode once, encode H.264 once, shared by every viewer of that camera


class LiveCamera(_Model):
    """Live-view settings of one camera, overriding the ``live`` section's."""

    transcode: LiveTranscode | None = Field(default=None, description="Overrides live.transcode for this camera")


_ICE_URL = re.compile(r"^(stun:[^\s?#/@]+|turn:[^\s?#/@]+(\?transport=(udp|tcp))?|turns:[^\s?#/@]+(\?transport=tcp)?)$")


class IceServer(_Model):
    """A STUN or TURN server for viewers on other networks (the browser and the daemon both use it)."""

    urls: Annotated[list[str], Field(min_length=1, max_length=8, description="stun:/turn:/turns: URLs")]
    username: Annotated[str | None, Field(max_length=512, description="TURN user name")] = None
    credential: Annotated[
        str | None,
        Field(max_length=1024, repr=False, description="${NAME}: the TURN password; registered as a secret"),
    ] = None
    auth_secret: Annotated[
        str | None,
        Field(max_length=1024, repr=False,
              description="${NAME}: secret shared with the TURN server (coturn use-auth-secret); viewers get "
                          "their own expiring credentials instead of username/credential"),
    ] = None
    credential_ttl_seconds: Annotated[
        int, Field(ge=60, le=7 * 86400, description="Lifetime of a credential made from auth_secret")
    ] = 86400

    @field_validator("urls")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not _ICE_URL.match(url):
                raise ValueError(f"{secrets.redact(url)!r} is not a stun:, turn: or turns: URL (host[:port], "
                                 "?transport=udp|tcp for turn:, tcp for turns:)")
        return urls

    @model_validator(mode="after")
    def _turn_credentials(self) -> IceServer:
        for secret in (self.credential, self.auth_secret):
            if secret:
                secrets.register(secret)
        if self.auth_secret and (self.username or self.credential):
            raise ValueError("give a TURN server either auth_secret or username and credential, not both")
        if any(url.startswith("turn") for url in self.urls) and not (
                self.auth_secret or (self.username and self.credential)):
            raise ValueError("a TURN server needs username and credential, or auth_secret")
        return self


class Live(_Model):
    """Live view over WebRTC (WHEP): how many viewers, how patient, how much buffering."""

    viewer_queue_packets: Annotated[
        int, Field(ge=16, le=10_000, description="Per viewer; a slower viewer drops packets, counted")
    ] = 300
    max_sessions: Annotated[int, Field(ge=1, le=1000, description="Concurrent WHEP sessions; more answer 503")] = 64
    max_sessions_per_user: Annotated[
        int, Field(ge=1, le=1000, description="Concurrent WHEP sessions per user or token; more answer 429")
    ] = 16
    connect_timeout_seconds: Annotated[
        float, Field(gt=0, le=300, description="A session whose peer does not connect in time is closed")
    ] = 20.0
    shared_packetization: bool = Field(
        default=True, description="Cut each H.264 access unit into RTP packets once per camera and only write headers, "
        "encrypt and send per viewer; false: aiortc's own sender packetizes for each viewer (several times the CPU "
        "per viewer; for comparison and diagnosis)",
    )
    transcode: LiveTranscode = Field(
        default=LiveTranscode.OFF, description="H.265 cameras: off (refused, explained on the tile) or h264"
    )
    cameras: dict[str, LiveCamera] = Field(default_factory=dict, description="Per camera id: overrides")
    max_transcodes: Annotated[
        int, Field(ge=1, le=64, description="Cameras transcoded at once; a viewer of one more answers 503")
    ] = 2
    transcode_width: Annotated[int, Field(ge=160, le=3840, description="Largest transcoded width")] = 1280
    transcode_height: Annotated[int, Field(ge=90, le=2160, description="Largest transcoded height")] = 720
    transcode_bitrate_kbps: Annotated[int, Field(ge=100, le=50_000, description="libx264 target bitrate")] = 2000
    ice_servers: Annotated[
        list[IceServer], Field(max_length=8, description="STUN/TURN for viewers on other networks; none by default")
    ] = []
    turn_retry_seconds: Annotated[
        float,
        Field(ge=1, le=3600, description="A STUN/TURN server that gave the daemon no candidate is skipped this long"),
    ] = 60.0

    def transcode_for(self, camera_id: str) -> LiveTranscode:
        override = self.cameras.get(camera_id)
        return override.transcode if override is not None and override.transcode is not None else self.transcode


class Recordings(_Model):
    """Auditor retrieval: search, clips and evidence exports."""

    max_range_hours: Annotated[float, Field(gt=0, le=24 * 366, description="Longest clip or export range")] = 24.0
    max_search_hours: Annotated[
        float, Field(gt=0, le=24 * 366, description="Longest range of one GET /api/recordings search")
    ] = 168.0
    max_export_jobs: Annotated[
        int, Field(ge=1, le=100, description="Exports queued or running at once; more answer 503")
    ] = 4
    exports_path: AbsolutePath | None = Field(
        default=None, description="Finished evidence packages; default <storage.path>/exports (absolute path)"
    )
    export_quota_mb: Annotated[
        float, Field(gt=0, le=1 << 30, description="Packages kept at once, in MB; an export that would exceed it fails")
    ] = 20480
    export_keep_hours: Annotated[
        float, Field(gt=0, le=24 * 366, description="A package never downloaded is deleted this long after it is made")
    ] = 168
    export_keep_hours_after_download: Annotated[
        float, Field(gt=0, le=24 * 366, description="A downloaded package is deleted this long after its download")
    ] = 24
    checkpoint_seconds: Annotated[
        float, Field(ge=1, le=86400, description="How often the station signs a checkpoint of its chain heads")
    ] = 300
    playback_cache_mb: Annotated[
        float, Field(gt=0, le=1 << 30, description="Fragmented copies of uploaded files made for HLS playback, in MB")
    ] = 10240


class Auth(_Model):
    """Users, sessions, API tokens and the audit log (one SQLite file)."""

    database: AbsolutePath | None = Field(default=None, description="Default: <storage.path>/auth.sqlite3")
    session_idle_minutes: Annotated[float, Field(gt=0, le=24 * 60, description="Idle browser sessions end")] = 30
    session_max_hours: Annotated[float, Field(gt=0, le=7 * 24, description="Sessions end this long after login")] = 12
    login_max_failures: Annotated[int, Field(ge=1, le=1000, description="Failed logins per user in the window")] = 5
    login_max_failures_per_address: Annotated[int, Field(ge=1, le=10_000)] = 20
    login_window_seconds: Annotated[float, Field(gt=0, le=86400)] = 900
    login_lockout_seconds: Annotated[float, Field(gt=0, le=86400, description="Refuse logins this long")] = 900
    identity_cache_seconds: Annotated[
        float, Field(ge=0, le=300, description="Tokens and sessions are looked up again after this long")
    ] = 5
    password_check_threads: Annotated[
        int, Field(ge=1, le=64, description="Threads of the Argon2 pool (sign-ins only, not the default executor)")
    ] = 2
    max_pending_logins: Annotated[
        int, Field(ge=1, le=10_000, description="Sign-ins being checked at once; more answer 503 login_busy")
    ] = 16


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Log(_Model):
    level: LogLevel = LogLevel.INFO
    ffmpeg_level: LogLevel | None = Field(
        default=LogLevel.ERROR, description="FFmpeg's own messages at or above this level; null: none"
    )


class Onvif(_Model):
    """A camera's ONVIF device service: its clock is checked and its own events become alarms."""

    url: str = Field(description="http(s) URL of the device service, e.g. http://user:${PASS}@host/onvif/device_service")
    clock_check_seconds: Annotated[float, Field(ge=5, le=86400, description="Read the camera's clock this often")] = 300
    events: bool = Field(default=True, description="Subscribe (PullPoint) to the camera's own events")
    timeout_seconds: Annotated[float, Field(gt=0, le=120, description="Bound of one request")] = 10.0
    backfill: bool = Field(default=True, description="After an outage, retrieve the missing footage from the "
                           "camera's own card when it has edge storage (ONVIF Profile G); see the backfill section")

    @field_validator("url")
    @classmethod
    def _device_url(cls, value: str) -> str:
        try:
            parts = urllib.parse.urlsplit(value)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"not a valid URL ({exc.args[0].split(':')[0]})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if port is not None and not 1 <= port <= 65535:
            raise ValueError("port must be between 1 and 65535")
        if parts.path.rstrip("/") not in ("", "/onvif/device_service"):
            raise ValueError("the device service must be at /onvif/device_service (the ONVIF default)")
        return value

    @property
    def display_url(self) -> str:
        return secrets.redact_url(self.url)


class Backfill(_Model):
    """Edge backfill (recorder/backfill.py): gaps of a camera with edge storage are filled from its card."""

    enabled: bool = True
    max_age_seconds: Annotated[float, Field(
        ge=60, le=30 * 86400, description="Gaps that ended longer ago than this are not retrieved")] = 86400.0
    max_bitrate_kbps: Annotated[float, Field(
        ge=64, le=1_000_000, description="Bandwidth a retrieval may take from the camera (all cameras together)")
    ] = 16000.0
    min_gap_seconds: Annotated[float, Field(ge=0.5, le=3600, description="Shorter gaps are left alone")] = 1.0
    attempts: Annotated[int, Field(ge=1, le=100, description="Tries of one gap before it is given up")] = 3
    retry_seconds: Annotated[float, Field(ge=1, le=86400, description="Wait after a failed try")] = 30.0
    scan_seconds: Annotated[float, Field(ge=0.5, le=3600, description="How often the index is looked at for gaps")
    ] = 10.0
    timeout_seconds: Annotated[float, Field(gt=0, le=120, description="Bound of every read from the camera")
    ] = 15.0


class Camera(_Model):
    id: Annotated[str, Field(pattern=r"^[a-z0-9_-]+$", max_length=64)]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    zone: Zone = Zone.OTHER
    url: str = Field(description="RTSP URL of the main stream (recorded)")
    live_url: str | None = Field(default=None, description="Optional RTSP substream for live view")
    record: bool = True
    health: CameraHealth | None = Field(default=None, description="Overrides of the global health thresholds")
    onvif: Onvif | None = Field(default=None, description="The camera's ONVIF device service (clock, events)")

    @field_validator("url", "live_url")
    @classmethod
    def _rtsp_url(cls, value: str | None) -> str | None:
        if value is not None:
            check_rtsp_url(value)
        return value

    @property
    def display_url(self) -> str:
        return secrets.redact_url(self.url)


# -- body-worn cameras (issue 15) ---------------------------------------------------------


class Bodycam(_Model):
    """A body-worn camera: its files are uploaded from a dock, never streamed (recorder/bodycam.py)."""

    id: Annotated[str, Field(pattern=r"^[a-z0-9_-]+$", max_length=64,
                             description="Device id; shares the camera id namespace")]
    name: Annotated[str, Field(min_length=1, max_length=200)]


class BodycamUploads(_Model):
    """How uploaded body-camera files are taken (``bodycam_uploads``)."""

    max_file_mb: Annotated[
        float, Field(gt=0, le=1 << 22, description="Largest file one upload may bring, in MB; larger: 413")
    ] = 8192
    max_duration_hours: Annotated[
        float, Field(gt=0, le=4, description="Longest recording one file may hold (the index bounds segments)")
    ] = 4
    clock_tolerance_seconds: Annotated[
        float, Field(ge=0, le=86400 * 365, description="A device clock further than this from the dock's receipt "
                                                       "time (beyond the recording's length) is flagged")
    ] = 120
    stall_seconds: Annotated[
        float, Field(gt=0, le=600, description="An upload whose body sends nothing for this long is aborted (408)")
    ] = 30
    max_upload_seconds: Annotated[
        float, Field(gt=0, le=86400, description="An upload must be complete within this long; else 408")
    ] = 3600
    max_concurrent: Annotated[
        int, Field(ge=1, le=256, description="Uploads (API and inbox) taken at once; more answer 503")
    ] = 4


class BodycamInbox(_Model):
    """A folder docks copy files into: ``<device>_<anything>.mp4`` / ``.mkv`` (``bodycams_inbox``)."""

    path: AbsolutePath = Field(description="The folder watched")
    quarantine: AbsolutePath = Field(description="Files that fail go here, with a .reason.json beside them")
    scan_seconds: Annotated[float, Field(gt=0, le=3600, description="How often the folder is looked at")] = 5
    stable_seconds: Annotated[
        float, Field(ge=0, le=3600, description="A file is taken only once its size and mtime stayed the same "
                                                "this long (a dock still copying it is waited for)")
    ] = 10

    @model_validator(mode="after")
    def _apart(self) -> BodycamInbox:
        if self.quarantine == self.path or self.quarantine.is_relative_to(self.path):
            raise ValueError("quarantine must not be the inbox or inside it")
        return self


class LockMode(StrEnum):
    COMPLIANCE = "compliance"
    GOVERNANCE = "governance"


class Archive(_Model):
    """The off-site write-once archive on S3 object storage with Object Lock (recorder/archive.py)."""

    endpoint: str = Field(description="http(s)://host[:port] of the S3 service")
    bucket: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", description="S3 bucket name")]
    region: Annotated[str, Field(min_length=1, max_length=64)] = "default"
    access_key: Annotated[str, Field(min_length=1, max_length=256, description="${NAME}: the S3 access key id")]
    secret_key: Annotated[str, Field(min_length=1, max_length=1024, description="${NAME}: the S3 secret key")]
    ca: Path | None = Field(default=None, description="PEM CA bundle that signs the store's certificate")
    lock_mode: LockMode = Field(default=LockMode.COMPLIANCE, description="S3 Object Lock mode of each version")
    lock_days: Annotated[int, Field(ge=1, le=36500, description="Each version is locked at least this long")] = 31
    prefix: Annotated[
        str, Field(pattern=r"^([A-Za-z0-9._-]+/)*$", max_length=200, description="Key prefix, '' or ending in '/'")
    ] = ""
    max_upload_mbit_per_second: Annotated[
        float, Field(ge=0, le=100_000, description="Upload bandwidth bound in Mbit/s; 0: unbounded")
    ] = 0
    backlog_alarm_seconds: Annotated[
        float, Field(gt=0, le=30 * 86400, description="archive_backlog opens when the oldest unarchived segment "
                                                      "closed longer ago than this")
    ] = 900
    timeout_seconds: Annotated[
        float, Field(gt=0, le=600, description="Connect and read timeout per request (also bounds a stop)")
    ] = 10
    retry_initial_seconds: Annotated[float, Field(gt=0, le=600)] = 1.0
    retry_max_seconds: Annotated[float, Field(gt=0, le=3600)] = 300.0
    scan_seconds: Annotated[
        float, Field(gt=0, le=3600, description="How often the index is looked at for newly closed segments")
    ] = 2.0
    verify_uploads: bool = Field(default=True, description="Read each uploaded version back and hash it once")
    tiered_retention: bool = Field(
        default=True, description="Under disk pressure delete archived and verified segments first"
    )
    pressure_deletes_unarchived: bool = Field(
        default=True, description="When no archived segment is left, disk pressure may still delete unarchived "
                                  "footage (oldest first); false: keep it and raise disk_full"
    )
    cache_mb: Annotated[
        float, Field(ge=16, le=1 << 24, description="Local cache of segments fetched back from the archive")
    ] = 2048

    @field_validator("endpoint")
    @classmethod
    def _http_endpoint(cls, value: str) -> str:
        parts = check_http_url(value)
        if parts.username or parts.password:
            raise ValueError("must not hold credentials: use access_key and secret_key")
        return value

    @field_validator("ca")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value


class Config(_Model):
    station: Station
    storage: Storage = Storage()
    web: Web = Web()
    health: Health = Health()
    alerts: Alerts = Alerts()
    ingest: Ingest = Ingest()
    live: Live = Live()
    recordings: Recordings = Recordings()
    auth: Auth = Auth()
    log: Log = Log()
    backfill: Backfill = Backfill()
    archive: Archive | None = None
    cameras: list[Camera] = Field(default_factory=list)
    bodycams: list[Bodycam] = Field(default_factory=list, description="Body-worn cameras (uploaded files)")
    bodycams_inbox: BodycamInbox | None = None
    bodycam_uploads: BodycamUploads = BodycamUploads()

    @field_validator("bodycams")
    @classmethod
    def _unique_bodycam_ids(cls, bodycams: list[Bodycam]) -> list[Bodycam]:
        duplicate = first_duplicate([b.id for b in bodycams])
        if duplicate is not None:
            raise ValueError(f"duplicate body camera id {duplicate!r}")
        return bodycams

    @model_validator(mode="after")
    def _one_id_namespace(self) -> Config:
        cameras = {c.id for c in self.cameras}
        clash = [b.id for b in self.bodycams if b.id in cameras]
        if clash:
            raise ValueError(f"body camera id(s) {', '.join(map(repr, clash))} are also camera ids: "
                             "cameras and body cameras share one id namespace")
        return self

    def bodycam(self, device_id: str) -> Bodycam | None:
        return next((b for b in self.bodycams if b.id == device_id), None)

    def is_source(self, source_id: str) -> bool:
        """A fixed camera or a body camera: anything with recordings under this id."""
        return self.camera(source_id) is not None or self.bodycam(source_id) is not None

    @field_validator("cameras")
    @classmethod
    def _unique_ids(cls, cameras: list[Camera]) -> list[Camera]:
        duplicate = first_duplicate([camera.id for camera in cameras])
        if duplicate is not None:
            raise ValueError(f"duplicate camera id {duplicate!r}")
        return cameras

    def camera(self, camera_id: str) -> Camera | None:
        return next((c for c in self.cameras if c.id == camera_id), None)

    @property
    def auth_database(self) -> Path:
        return self.auth.database or self.storage.path / "auth.sqlite3"

    @property
    def exports_path(self) -> Path:
        return self.recordings.exports_path or self.storage.path / "exports"


def first_duplicate(ids: list[str]) -> str | None:
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            return item
        seen.add(item)
    return None


def split_host_port(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` → ``("127.0.0.1", 8080)``; ``"[::1]:80"`` → ``("::1", 80)``."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        return "", 0
    return host.strip("[]"), int(port)


def check_http_url(value: str) -> urllib.parse.SplitResult:
    """Raise ValueError unless ``value`` is an http(s) URL with a host."""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return parts


def check_rtsp_url(value: str) -> None:
    """Raise ValueError naming what is wrong, without echoing the URL (it may hold a password)."""
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc.args[0].split(':')[0]})") from None
    if parts.scheme not in ("rtsp", "rtsps"):
        raise ValueError("must start with rtsp:// or rtsps://")
    if not parts.hostname:
        raise ValueError("has no host")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("port must be between 1 and 65535")
    if any(ch.isspace() for ch in value):
        raise ValueError("must not contain spaces")


# -- loading -------------------------------------------------------------------------------


def load(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> Config:
    """Read, substitute and validate a config file; raise ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    return parse(text, source=str(path), environ=os.environ if environ is None else environ)


Lines = dict[tuple[str | int, ...], int]


def read_yaml(text: str, source: str) -> tuple[dict[str, Any], Lines, list[str]]:
    """The top-level mapping, the line of every key (for messages), and duplicate-key problems."""
    lines: Lines = {}
    problems: list[str] = []
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ConfigError([f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}"]) from None
    if node is not None:
        _collect_lines(node, (), lines, problems, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1: the top level must be a mapping of sections"])
    return data, lines, problems


def parse(text: str, *, source: str = "<config>", environ: dict[str, str] | os._Environ[str]) -> Config:
    data, lines, problems = read_yaml(text, source)

    problems += _literal_passwords(data, source, lines)
    problems += _literal_archive_keys(data, source, lines)
    data = _substitute(data, (), environ, problems, source, lines)
    problems += _duplicate_camera_ids(data, source, lines)
    problems += _bodycam_id_clashes(data, source, lines)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems += _describe(exc, source, lines)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    for camera in config.cameras:
        for url in (camera.url, camera.live_url, camera.onvif.url if camera.onvif else None):
            if url:
                _register_url_secret(url)
    if config.archive is not None:
        secrets.register(config.archive.access_key)
        secrets.register(config.archive.secret_key)
    return config


def _duplicate_camera_ids(data: dict[str, Any], source: str, lines: dict[tuple[str | int, ...], int]) -> list[str]:
    """Found on the raw data so that it is reported even when other keys of a camera are wrong."""
    cameras = data.get("cameras")
    if not isinstance(cameras, list):
        return []
    problems = []
    seen: set[str] = set()
    for index, camera in enumerate(cameras):
        camera_id = camera.get("id") if isinstance(camera, dict) else None
        if not isinstance(camera_id, str):
            continue
        if camera_id in seen:
            path = ("cameras", index, "id")
            problems.append(f"{_where(source, lines, path)}: {format_path(path)}: duplicate camera id {camera_id!r}")
        seen.add(camera_id)
    return problems


def _bodycam_id_clashes(data: dict[str, Any], source: str, lines: Lines) -> list[str]:
    """A body camera whose id is a camera's (or another body camera's), naming both places."""
    cameras, bodycams = data.get("cameras"), data.get("bodycams")
    if not isinstance(bodycams, list):
        return []
    seen: dict[str, tuple[str | int, ...]] = {}
    for index, camera in enumerate(cameras if isinstance(cameras, list) else []):
        if isinstance(camera, dict) and isinstance(camera.get("id"), str):
            seen.setdefault(camera["id"], ("cameras", index, "id"))
    problems = []
    for index, device in enumerate(bodycams):
        device_id = device.get("id") if isinstance(device, dict) else None
        if not isinstance(device_id, str):
            continue
        path = ("bodycams", index, "id")
        if device_id in seen:
            other = seen[device_id]
            problems.append(f"{_where(source, lines, path)}: {format_path(path)}: id {device_id!r} is already "
                            f"{format_path(other)} ({_where(source, lines, other)}): cameras and body cameras "
                            "share one id namespace")
        else:
            seen[device_id] = path
    return problems


_ONLY_REFS = re.compile(r"^(\$\{[A-Za-z_][A-Za-z0-9_]*\})+$")


def _literal_passwords(data: dict[str, Any], source: str, lines: dict[tuple[str | int, ...], int]) -> list[str]:
    """Camera passwords come only from ${NAME} references (environment or systemd credentials)."""
    cameras = data.get("cameras")
    if not isinstance(cameras, list):
        return []
    problems = []
    for index, camera in enumerate(cameras):
        if not isinstance(camera, dict):
            continue
        onvif = camera.get("onvif")
        urls: list[tuple[tuple[str | int, ...], Any]] = [
            (("cameras", index, key), camera.get(key)) for key in ("url", "live_url")]
        if isinstance(onvif, dict):
            urls.append((("cameras", index, "onvif", "url"), onvif.get("url")))
        for path, value in urls:
            if not isinstance(value, str) or "://" not in value:
                continue
            start = value.find("://") + 3
            at = value.rfind("@", start, _authority_end(value, start))
            if at == -1:
                continue
            _, sep, password = value[start:at].partition(":")
            if sep and password and not _ONLY_REFS.match(password):
                problems.append(
                    f"{_where(source, lines, path)}: {format_path(path)}: a literal password is not allowed; "
                    "write ${NAME} and provide NAME as an environment variable or a systemd credential"
                )
    return problems


def _literal_archive_keys(data: dict[str, Any], source: str, lines: Lines) -> list[str]:
    """The archive's keys come only from ${NAME} references, like camera passwords."""
    archive = data.get("archive")
    if not isinstance(archive, dict):
        return []
    problems = []
    for key in ("access_key", "secret_key"):
        value = archive.get(key)
        if isinstance(value, str) and value and not _ONLY_REFS.match(value):
            path = ("archive", key)
            problems.append(
                f"{_where(source, lines, path)}: {format_path(path)}: a literal key is not allowed; "
                "write ${NAME} and provide NAME as an environment variable or a systemd credential"
            )
    return problems


def _where(source: str, lines: dict[tuple[str | int, ...], int], path: tuple[str | int, ...]) -> str:
    for end in range(len(path), -1, -1):
        line = lines.get(path[:end])
        if line is not None:
            return f"{source}:{line}"
    return source


def format_path(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _collect_lines(
    node: yaml.Node,
    path: tuple[str | int, ...],
    lines: dict[tuple[str | int, ...], int],
    problems: list[str],
    source: str,
) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = (*path, key)
            if key in seen:
                problems.append(f"{source}:{key_node.start_mark.line + 1}: {format_path(child)}: duplicate key")
            seen.add(key)
            lines[child] = key_node.start_mark.line + 1
            _collect_lines(value_node, child, lines, problems, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_lines(item, (*path, index), lines, problems, source)


def _substitute(
    value: Any,
    path: tuple[str | int, ...],
    environ: dict[str, str] | os._Environ[str],
    problems: list[str],
    source: str,
    lines: dict[tuple[str | int, ...], int],
) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, (*path, str(k)), environ, problems, source, lines) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, (*path, i), environ, problems, source, lines) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    secret_key = bool(path) and isinstance(path[-1], str) and bool(_SECRET_KEY.search(path[-1]))

    def lookup(match: re.Match[str], *, in_userinfo: bool) -> str:
        name = match.group(1)
        resolved = _resolve_reference(name, environ)
        if resolved is None:
            problems.append(
                f"{_where(source, lines, path)}: {format_path(path)}: ${{{name}}} is not set "
                f"(no environment variable {name} and no credential file {name} in $CREDENTIALS_DIRECTORY)"
            )
            return ""
        if in_userinfo or secret_key:
            secrets.register(resolved)
        return urllib.parse.quote(resolved, safe="") if in_userinfo else resolved

    scheme_end = value.find("://")
    if scheme_end > 0:
        rest_start = scheme_end + 3
        authority_end = _authority_end(value, rest_start)
        at = value.rfind("@", rest_start, authority_end)
        if at != -1:
            head = value[:rest_start]
            userinfo = _REF.sub(lambda m: lookup(m, in_userinfo=True), value[rest_start:at])
            tail = _REF.sub(lambda m: lookup(m, in_userinfo=False), value[at:])
            return head + userinfo + tail
    return _REF.sub(lambda m: lookup(m, in_userinfo=False), value)


def _authority_end(value: str, start: int) -> int:
    """End of the authority part; '/' inside a ${REF} does not count."""
    index = start
    while index < len(value):
        if value.startswith("${", index):
            close = value.find("}", index)
            if close == -1:
                break
            index = close + 1
            continue
        if value[index] in "/?#":
            return index
        index += 1
    return len(value)


def _resolve_reference(name: str, environ: dict[str, str] | os._Environ[str]) -> str | None:
    if name in environ:
        return environ[name]
    cred_dir = environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        candidate = Path(cred_dir) / name
        try:
            return candidate.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError:
            return None
    return None


def _register_url_secret(url: str) -> None:
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:
        return
    if password:
        secrets.register(password)
        secrets.register(urllib.parse.unquote(password))


def _describe(exc: ValidationError, source: str, lines: dict[tuple[str | int, ...], int]) -> list[str]:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = tuple(part for part in error["loc"] if not (isinstance(part, str) and part.startswith("function-")))
        kind = error["type"]
        if kind == "extra_forbidden":
            message = "unknown key"
        elif kind == "missing":
            message = "required key is missing"
        else:
            message = str(error["msg"])
            message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        problems.append(f"{_where(source, lines, loc)}: {format_path(loc)}: {message}")
    return problems
