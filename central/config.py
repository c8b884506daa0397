"""The central console's configuration (``console.yaml``): parsed once, fully validated, frozen.

It is loaded with the station config's machinery (:mod:`nvr.base.config`): every
error names ``file:line: yaml.path``, ``${NAME}`` is replaced from the
environment or systemd credentials, and every station token is registered
with :mod:`nvr.base.secrets` so that it is masked in logs, errors and API answers.
A station token must be a ``${NAME}`` reference, never written literally.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator

from nvr.base import secrets
from nvr.base.config import (
    _ONLY_REFS,
    AbsolutePath,
    Auth,
    Backoff,
    ConfigError,
    Log,
    Tls,
    Web,
    _describe,
    _Model,
    _substitute,
    _where,
    first_duplicate,
    format_path,
    read_yaml,
    split_host_port,
)
from nvr.identity.authdb import AuthError

_CAMERA_ID = re.compile(r"^[a-z0-9_-]{1,64}$")  # as nvr.base.config.Camera.id


class ConsoleSection(_Model):
    id: Annotated[str, Field(pattern=r"^[a-z0-9-]+$", max_length=64, description="Console id, sent to stations")]
    name: Annotated[str, Field(min_length=1, max_length=200)] = "Central console"
    listen: str = Field(default="127.0.0.1:8090", description="host:port of the console's HTTP server")
    tls: Tls | None = Field(default=None, description="Serve HTTPS with this certificate and key")
    hsts_seconds: Annotated[int, Field(ge=0, le=2 * 365 * 86400)] = 31536000
    max_event_streams: Annotated[
        int, Field(ge=1, le=10_000, description="Open fleet feeds (SSE) in all; more answer 503")
    ] = 64
    max_event_streams_per_user: Annotated[
        int, Field(ge=1, le=10_000, description="Open fleet feeds per user or token; more answer 429")
    ] = 8

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, port = split_host_port(value)
        if not host or not 1 <= port <= 65535:
            raise ValueError("must be host:port, e.g. 127.0.0.1:8090")
        return value


class ConsoleStorage(_Model):
    path: AbsolutePath = Field(default=Path("/var/lib/nvr-console"), description="The console's users and audit log")


class Follow(Backoff):
    """How stations are followed: polling, the alarm feed, timeouts and reconnect backoff."""

    poll_seconds: Annotated[float, Field(gt=0, le=300, description="Camera list and open alarms this often")] = 3.0
    timeout_seconds: Annotated[float, Field(gt=0, le=120, description="Bound on one request to a station")] = 5.0
    stream_idle_seconds: Annotated[
        float, Field(gt=0, le=600, description="An alarm feed silent this long is dead (stations send keepalives)")
    ] = 40.0
    checkpoint_seconds: Annotated[
        float, Field(gt=0, le=3600, description="Collect the stations' signed checkpoints this often")
    ] = 60.0


class StationLinkConfig(_Model):
    id: Annotated[str, Field(pattern=r"^[a-z0-9-]+$", max_length=64, description="The station's id")]
    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    url: str = Field(description="Base URL of the station's API, e.g. https://10.1.12.5:8080")
    token: Annotated[str, Field(min_length=8, description="Station API token (role central), from ${NAME}")]
    ca: Path | None = Field(default=None, description="PEM CA or certificate that the station's TLS must chain to")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            parts = urllib.parse.urlsplit(value)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError("not a valid URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise ValueError("must not hold credentials; the station token goes in 'token'")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("must be the station's base URL, without a path")
        return value.rstrip("/")

    @field_validator("ca")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @property
    def display_name(self) -> str:
        return self.name or self.id


class ConsoleConfig(_Model):
    console: ConsoleSection
    storage: ConsoleStorage = ConsoleStorage()
    auth: Auth = Auth()
    follow: Follow = Follow()
    log: Log = Log()
    stations: Annotated[list[StationLinkConfig], Field(min_length=1)]

    @field_validator("stations")
    @classmethod
    def _unique_ids(cls, stations: list[StationLinkConfig]) -> list[StationLinkConfig]:
        duplicate = first_duplicate([s.id for s in stations])
        if duplicate is not None:
            raise ValueError(f"duplicate station id {duplicate!r}")
        return stations

    def station(self, station_id: str) -> StationLinkConfig | None:
        return next((s for s in self.stations if s.id == station_id), None)

    def camera(self, camera_id: str) -> str | None:
        """An allow-list entry of a console user or token (``nvr user add --cameras`` on a console file).

        Camera ids are only unique within a station, so a console names a camera
        ``STATION/CAMERA`` (or ``STATION/*``: every camera of that station); the
        station must be in this file.  A bare id is refused with a message saying so
        (its cameras are not known offline, so the camera part is not checked).
        """
        station, sep, camera = camera_id.partition("/")
        if not sep:
            raise AuthError(
                f"--cameras: {camera_id!r} is a bare camera id; on a central console write STATION/CAMERA "
                f"(e.g. {self.stations[0].id}/{camera_id}) or STATION/* for every camera of a station")
        if self.station(station) is None:
            return None
        return camera_id if camera == "*" or _CAMERA_ID.match(camera) else None

    @property
    def web(self) -> Web:
        """The console's HTTP settings in the shape the shared web code (access control, TLS) reads."""
        console = self.console
        return Web(listen=console.listen, tls=console.tls, hsts_seconds=console.hsts_seconds,
                   max_event_streams=console.max_event_streams,
                   max_event_streams_per_user=console.max_event_streams_per_user)

    @property
    def auth_database(self) -> Path:
        return self.auth.database or self.storage.path / "auth.sqlite3"


def load(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> ConsoleConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    return parse(text, source=str(path), environ=dict(os.environ) if environ is None else environ)


def parse(text: str, *, source: str = "<console config>", environ: dict[str, str]) -> ConsoleConfig:
    data, lines, problems = read_yaml(text, source)
    problems += _literal_tokens(data, source, lines)
    data = _substitute(data, (), environ, problems, source, lines)
    config: ConsoleConfig | None = None
    try:
        config = ConsoleConfig.model_validate(data)
    except ValidationError as exc:
        problems += _describe(exc, source, lines)
    if problems or config is None:
        raise ConfigError(list(dict.fromkeys(problems)))
    for station in config.stations:
        secrets.register(station.token)
    return config


def _literal_tokens(data: dict[str, Any], source: str, lines: dict[tuple[str | int, ...], int]) -> list[str]:
    stations = data.get("stations")
    if not isinstance(stations, list):
        return []
    problems = []
    for index, station in enumerate(stations):
        token = station.get("token") if isinstance(station, dict) else None
        if isinstance(token, str) and token and not _ONLY_REFS.match(token):
            path = ("stations", index, "token")
            problems.append(
                f"{_where(source, lines, path)}: {format_path(path)}: a literal token is not allowed; "
                "write ${NAME} and provide NAME as an environment variable or a systemd credential"
            )
    return problems
