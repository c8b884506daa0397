"""The station's Ed25519 signing key, used to seal evidence exports.

Generated at first start under ``<storage>/keys/`` with owner-only
permissions.  Its fingerprint (SHA-256 of the raw public key) is what a court
or an auditor compares against the one the station publishes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_DIR = "keys"
PRIVATE_FILE = "station-ed25519.pem"
PUBLIC_FILE = "station-ed25519.pub.pem"


def fingerprint(public: Ed25519PublicKey) -> str:
    """``SHA256:`` and the whole SHA-256 of the raw public key, in groups of four hex digits."""
    digest = fingerprint_hex(public)
    return "SHA256:" + ":".join(digest[i : i + 4] for i in range(0, 64, 4))


def fingerprint_hex(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


# Packages made before the full fingerprint carried its first 128 bits (32 hex digits).
_LEGACY_HEX = 32
_HEX = set("0123456789abcdef")


def normalize_fingerprint(text: str) -> str:
    """The hex digits of a fingerprint as people write it (``SHA256:ab12:...``, spaces, any case).

    Raises ValueError unless it is 32 (an older, shorter form) or 64 hex digits.
    """
    value = text.strip().lower()
    if value.startswith("sha256:"):
        value = value[len("sha256:"):]
    value = value.replace(":", "").replace(" ", "").replace("-", "")
    if not value or set(value) - _HEX or len(value) not in (_LEGACY_HEX, 64):
        raise ValueError("a fingerprint is SHA256: followed by 64 hex digits (as `nvr key show` prints it)")
    return value


def fingerprint_matches(text: str, public: Ed25519PublicKey) -> bool:
    """Does the fingerprint ``text`` (full, or the older 128-bit form) name this key?"""
    try:
        given = normalize_fingerprint(text)
    except ValueError:
        return False
    full = fingerprint_hex(public)
    return given == full if len(given) == 64 else given == full[:_LEGACY_HEX]


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def load_station_public(storage_root: Path) -> Ed25519PublicKey | None:
    """The station's public key as stored beside its private key, or None if there is none yet."""
    path = storage_root / KEY_DIR / PUBLIC_FILE
    try:
        return load_public(path.read_bytes())
    except FileNotFoundError:
        return None


class StationKey:
    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.private = private
        self.public = private.public_key()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)

    @property
    def public_pem(self) -> bytes:
        return public_pem(self.public)

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)

    @classmethod
    def load_or_create(cls, storage_root: Path) -> StationKey:
        directory = storage_root / KEY_DIR
        path = directory / PRIVATE_FILE
        if path.exists():
            mode = path.stat().st_mode & 0o077
            if mode:
                os.chmod(path, 0o600)  # someone loosened it: tighten again
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(loaded, Ed25519PrivateKey):
                raise ValueError(f"{path} is not an Ed25519 private key")
            return cls(loaded)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        station_key = cls(private)
        (directory / PUBLIC_FILE).write_bytes(station_key.public_pem)
        return station_key
