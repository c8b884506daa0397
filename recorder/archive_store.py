"""The S3 object store of the off-site archive: one bucket with Object Lock, through boto3.

Every method here blocks (network I/O): callers run them on a thread of their
own (the archiver's database thread, a CLI), never on the event loop.  Each
failure becomes an :class:`ArchiveError` with a small, stable ``code`` and a
message free of credentials (botocore never puts the secret key in one; the
message still passes :func:`nvr.base.secrets.redact`).

Keys encode station, camera and start: ``<prefix><station>/<camera>/<YYYY-MM-DD>/<camera>_<YYYYMMDDTHHMMSS.mmmZ>.mp4``.
Each version carries our SHA-256, the segment's chain hash and its index
fields in its metadata, so the archive alone proves what each object is and
in which order it was recorded.  The store checks the bytes twice on upload:
``Content-MD5``, and over plain HTTP the signed payload's SHA-256, which is the
segment's own SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import boto3
import botocore.exceptions
from botocore.config import Config as BotoConfig

from nvr.base import secrets
from nvr.base.config import Archive, LockMode
from recorder.storage import RECORDINGS

log = logging.getLogger(__name__)
# botocore's DEBUG lines are whole canonical requests and signatures, one burst per request: even a daemon
# logging at debug keeps them out (its errors reach us as exceptions, classified below).
for _name in ("botocore", "boto3", "s3transfer", "urllib3"):
    logging.getLogger(_name).setLevel(logging.INFO)

META_SHA256 = "nvr-sha256"
META_CHAIN = "nvr-chain-hash"
META_PREV = "nvr-prev-chain"
META_SEGMENT = "nvr-segment"  # base64url JSON of the index fields the chain hash covers
META_STATION = "nvr-station"
_CHUNK = 1 << 20


class ArchiveError(Exception):
    """The store refused or failed; ``code`` is one of the stable reasons below."""

    # unreachable, timeout, tls_error, auth_failed, bucket_missing, object_lock_disabled, store_error,
    # bad_digest, store_full, not_found, verify_failed, aborted, bad_config
    def __init__(self, code: str, message: str) -> None:
        super().__init__(secrets.redact(message))
        self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.args[0]}"


class Aborted(Exception):
    """Raised inside a throttled upload when the archiver stops."""


@dataclass(frozen=True, slots=True)
class StoredVersion:
    key: str
    version_id: str
    retain_until: float
    lock_mode: str


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    version_id: str
    size: int
    lock_mode: str | None
    retain_until: float | None
    metadata: dict[str, str]


def object_key(prefix: str, station: str, segment_path: str) -> str:
    """The archive key of a segment: its path under ``recordings/`` (camera, UTC day, start) after the station."""
    relative = segment_path.removeprefix(f"{RECORDINGS}/")
    return f"{prefix}{station}/{relative}"


def encode_fields(fields: dict[str, Any]) -> str:
    raw = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_fields(value: str) -> dict[str, Any]:
    data = json.loads(base64.urlsafe_b64decode(value.encode("ascii")))
    if not isinstance(data, dict):
        raise ValueError("not an object")
    return data


class TokenBucket:
    """Bounds bytes per second across every upload of one store (thread-safe)."""

    def __init__(self, bytes_per_second: float) -> None:
        self.rate = bytes_per_second
        self._allowance = 0.0
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def take(self, amount: int, stopping: Callable[[], bool]) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            # At most a quarter second of burst.
            self._allowance = min(self.rate / 4, self._allowance + (now - self._last) * self.rate)
            self._last = now
            self._allowance -= amount
            wait = -self._allowance / self.rate if self._allowance < 0 else 0.0
        while wait > 0:
            if stopping():
                raise Aborted()
            step = min(wait, 0.2)
            time.sleep(step)
            wait -= step


class _ThrottledBody:
    """A file for botocore: unthrottled while botocore hashes it for signing, throttled while it is sent."""

    def __init__(self, f: IO[bytes], bucket: TokenBucket, stopping: Callable[[], bool]) -> None:
        self._f = f
        self._bucket = bucket
        self._stopping = stopping
        self.sending = False

    def read(self, size: int = -1) -> bytes:
        if self._stopping():
            raise Aborted()
        data = self._f.read(size if 0 < size <= _CHUNK else _CHUNK)
        if self.sending and data:
            self._bucket.take(len(data), self._stopping)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(_CHUNK):
            yield chunk


def _mark_sending(request: Any, **_kwargs: Any) -> None:
    body = getattr(request, "body", None)
    if isinstance(body, _ThrottledBody):
        body.sending = True


class ArchiveStore:
    def __init__(self, config: Archive, stopping: Callable[[], bool] | None = None) -> None:
        self.config = config
        self.bucket = config.bucket
        self.stopping = stopping or (lambda: False)
        self.throttle = TokenBucket(config.max_upload_mbit_per_second * 1_000_000 / 8)
        boto_config = BotoConfig(
            region_name=config.region,
            connect_timeout=config.timeout_seconds,
            read_timeout=config.timeout_seconds,
            retries={"total_max_attempts": 1},  # the archiver retries, with its own backoff
            s3={"addressing_style": "path"},
            # Content-MD5 (and the signed SHA-256) instead of the newer trailing checksums some stores lack.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=4,
        )
        session = boto3.session.Session()
        self.client = session.client(
            "s3",
            endpoint_url=config.endpoint,
            aws_access_key_id=config.access_key,
            aws_secret_access_key=config.secret_key,
            verify=str(config.ca) if config.ca else True,
            config=boto_config,
        )
        self.client.meta.events.register("before-send.s3.PutObject", _mark_sending)

    # -- checks ---------------------------------------------------------------------------

    def check(self) -> str:
        """Raise ArchiveError saying what is wrong with the target, or return a one-line summary."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:  # noqa: BLE001 - classified below
            raise self._classify(exc, "bucket") from None
        try:
            lock = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except Exception as exc:  # noqa: BLE001
            error = self._classify(exc, "bucket")
            # The bucket answered HEAD just now: a 404 here is the lock configuration that is not there.
            if error.code in ("not_found", "bucket_missing", "object_lock_disabled"):
                raise ArchiveError("object_lock_disabled",
                                   f"bucket {self.bucket!r} does not have Object Lock enabled (it can only be "
                                   "enabled when the bucket is created); footage there could be deleted") from None
            raise error from None
        enabled = lock.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
        if enabled != "Enabled":
            raise ArchiveError("object_lock_disabled", f"bucket {self.bucket!r} does not have Object Lock enabled")
        return (f"archive OK: bucket {self.bucket} at {secrets.redact_url(self.config.endpoint)} with Object Lock; "
                f"versions locked in {self.config.lock_mode.value} mode for {self.config.lock_days} day(s)")

    # -- objects --------------------------------------------------------------------------

    def put_segment(self, key: str, path: Path, sha256: str, size: int, metadata: dict[str, str],
                    now: float | None = None) -> StoredVersion:
        """Upload the file byte for byte with its retention; the store checks MD5 (and SHA-256 over HTTP)."""
        md5 = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                md5.update(chunk)
        retain = datetime.fromtimestamp(now if now is not None else time.time(), tz=UTC) + timedelta(
            days=self.config.lock_days)
        retain = retain.replace(microsecond=0) + timedelta(seconds=1)
        mode = "COMPLIANCE" if self.config.lock_mode is LockMode.COMPLIANCE else "GOVERNANCE"
        try:
            with path.open("rb") as f:
                body = _ThrottledBody(f, self.throttle, self.stopping)
                answer = self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentLength=size,
                    ContentMD5=base64.b64encode(md5.digest()).decode(), ContentType="video/mp4",
                    Metadata={META_SHA256: sha256, **metadata},
                    ObjectLockMode=mode, ObjectLockRetainUntilDate=retain,
                )
        except Aborted:
            raise ArchiveError("aborted", "upload interrupted: the archiver is stopping") from None
        except Exception as exc:  # noqa: BLE001
            raise self._classify(exc, f"object {key}") from None
        version = answer.get("VersionId")
        if not version:
            raise ArchiveError("object_lock_disabled", f"the store gave {key} no version id: is versioning on?")
        return StoredVersion(key, str(version), retain.timestamp(), mode.lower())

    def put_bytes(self, key: str, data: bytes, content_type: str, now: float | None = None) -> StoredVersion:
        """A small object (the station's public key), locked like the segments."""
        retain = datetime.fromtimestamp(now if now is not None else time.time(), tz=UTC) + timedelta(
            days=self.config.lock_days, seconds=1)
        mode = "COMPLIANCE" if self.config.lock_mode is LockMode.COMPLIANCE else "GOVERNANCE"
        try:
            answer = self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type,
                ContentMD5=base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode(),
                Metadata={META_SHA256: hashlib.sha256(data).hexdigest()},
                ObjectLockMode=mode, ObjectLockRetainUntilDate=retain.replace(microsecond=0))
        except Exception as exc:  # noqa: BLE001
            raise self._classify(exc, f"object {key}") from None
        return StoredVersion(key, str(answer.get("VersionId") or ""), retain.timestamp(), mode.lower())

    def head(self, key: str, version_id: str | None = None) -> ObjectInfo:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            answer = self.client.head_object(**kwargs)
        except Exception as exc:  # noqa: BLE001
            raise self._classify(exc, f"object {key}") from None
        until = answer.get("ObjectLockRetainUntilDate")
        return ObjectInfo(
            key=key, version_id=str(answer.get("VersionId") or ""), size=int(answer.get("ContentLength", 0)),
            lock_mode=(answer.get("ObjectLockMode") or "").lower() or None,
            retain_until=until.timestamp() if until is not None else None,
            metadata={k.lower(): v for k, v in (answer.get("Metadata") or {}).items()},
        )

    def read(self, key: str, version_id: str, sink: Callable[[bytes], object]) -> tuple[str, int]:
        """Stream one version to ``sink``; return its SHA-256 and size."""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=key, VersionId=version_id)
            digest = hashlib.sha256()
            size = 0
            stream = answer["Body"]
            try:
                while chunk := stream.read(_CHUNK):
                    if self.stopping():
                        raise Aborted()
                    digest.update(chunk)
                    size += len(chunk)
                    sink(chunk)
            finally:
                stream.close()
        except Aborted:
            raise ArchiveError("aborted", "read interrupted: stopping") from None
        except ArchiveError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._classify(exc, f"object {key}") from None
        return digest.hexdigest(), size

    def hash_version(self, key: str, version_id: str) -> tuple[str, int]:
        return self.read(key, version_id, lambda _chunk: None)

    def download(self, key: str, version_id: str, dest: Path) -> tuple[str, int]:
        """Write one version to ``dest`` (via a temporary file); return its SHA-256 and size."""
        tmp = dest.with_name(dest.name + ".partial")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with tmp.open("wb") as f:
                result = self.read(key, version_id, f.write)
            tmp.rename(dest)
        finally:
            tmp.unlink(missing_ok=True)
        return result

    def versions(self, prefix: str) -> Iterator[tuple[str, str, bool]]:
        """(key, version id, is latest) of every version under ``prefix``."""
        try:
            paginator = self.client.get_paginator("list_object_versions")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for version in page.get("Versions", []):
                    yield str(version["Key"]), str(version["VersionId"]), bool(version.get("IsLatest"))
        except Exception as exc:  # noqa: BLE001
            raise self._classify(exc, f"listing {prefix}") from None

    # -- errors ---------------------------------------------------------------------------

    def _classify(self, exc: BaseException, what: str) -> ArchiveError:
        endpoint = secrets.redact_url(self.config.endpoint)
        if isinstance(exc, ArchiveError):
            return exc
        if isinstance(exc, botocore.exceptions.SSLError) or isinstance(getattr(exc, "__context__", None),
                                                                         ssl.SSLError):
            detail = str(getattr(exc, "kwargs", {}).get("error", exc))
            if "expired" in detail:
                why = "its certificate has expired"
            elif "hostname" in detail or "match" in detail:
                why = "its certificate does not name this host"
            elif "self-signed" in detail or "unable to get local issuer" in detail or "verify failed" in detail:
                why = "its certificate is not signed by a trusted CA (set archive.ca)"
            else:
                why = "the TLS handshake failed"
            return ArchiveError("tls_error", f"{endpoint}: {why}")
        if isinstance(exc, botocore.exceptions.ConnectTimeoutError | botocore.exceptions.ReadTimeoutError):
            return ArchiveError("timeout", f"{endpoint} did not answer within {self.config.timeout_seconds:g} s")
        if isinstance(exc, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectionClosedError):
            return ArchiveError("unreachable", f"cannot connect to {endpoint} (connection refused or no route)")
        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            message = str(error.get("Message") or "")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 401:
                return ArchiveError("auth_failed", f"{endpoint} refused the credentials ({code or status}): "
                                                   "wrong access_key or secret_key")
            if code == "ObjectLockConfigurationNotFoundError" or "ObjectLock" in code:
                return ArchiveError("object_lock_disabled", f"bucket {self.bucket!r} has no Object Lock")
            if code == "NoSuchBucket" or (status == 404 and what == "bucket"):
                return ArchiveError("bucket_missing", f"bucket {self.bucket!r} does not exist at {endpoint}")
            if code in ("AccessDenied", "Forbidden") or status == 403:
                return ArchiveError("auth_failed", f"{endpoint} denied access to {what} ({code or status}"
                                                   f"{': ' + message if message else ''})")
            if code in ("BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"):
                return ArchiveError("bad_digest", f"the store received {what} different from what was sent ({code})")
            if code in ("QuotaExceeded", "EntityTooLarge", "InsufficientCapacity") or status == 507:
                return ArchiveError("store_full", f"the store is full or over quota ({code or status})")
            if code in ("NoSuchKey", "NoSuchVersion", "404") or status == 404:
                return ArchiveError("not_found", f"{what} is not in the archive")
            return ArchiveError("store_error", f"{endpoint} answered {status} {code}{': ' + message if message else ''}"
                                               f" for {what}")
        if isinstance(exc, botocore.exceptions.BotoCoreError):
            return ArchiveError("store_error", f"{endpoint}: {type(exc).__name__}: {exc}")
        log.debug("unexpected archive error", exc_info=exc)
        return ArchiveError("store_error", f"{endpoint}: {type(exc).__name__}: {exc}")
