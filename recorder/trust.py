"""Trust anchors: which station keys a verifier believes, and the keyring file that carries them.

A signature only proves who signed if the verifier already holds the
signer's key from somewhere else than the package itself.  ``nvr verify``
takes that anchor as one of:

- ``--pubkey STATION.pem``: the station's public key (``nvr key show`` at the
  station, or ``GET /api/key``);
- ``--fingerprint HEX``: the key's fingerprint, read out of band (on paper, over
  the phone from the station commander); the package's own key must have it;
- ``--keyring FILE``: the keys of many stations, as the central console exports
  them (``GET /api/keyring`` on the console), each with its station id.

The keyring is JSON (``nvr-keyring/1``): ``{"format", "made_by", "made_at",
"keys": [{"station", "name", "fingerprint", "public_key_pem", "first_seen",
"last_seen"}]}``.  A station whose key changed has two entries; both are
trusted for that station, and the console warned when it saw the change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, ValidationError

from recorder.keys import fingerprint, fingerprint_matches, load_public, normalize_fingerprint

KEYRING_FORMAT = "nvr-keyring/1"
MAX_KEYRING_BYTES = 4 << 20  # some thousand stations


class TrustError(Exception):
    """An anchor that cannot be used (unreadable file, bad key, bad fingerprint); the message says which."""


@dataclass(frozen=True, slots=True)
class TrustedKey:
    label: str  # where the trust comes from, for the verdict: "--pubkey st.pem", "keyring: station st-1"
    public: Ed25519PublicKey | None = None  # None: only a fingerprint is known
    fingerprint_hex: str | None = None
    station: str | None = None  # the keyring's station id: the package must come from that station

    def matches(self, public: Ed25519PublicKey) -> bool:
        if self.public is not None:
            return fingerprint(self.public) == fingerprint(public)
        return self.fingerprint_hex is not None and fingerprint_matches(self.fingerprint_hex, public)


@dataclass(frozen=True, slots=True)
class TrustAnchor:
    keys: tuple[TrustedKey, ...]

    @property
    def public_keys(self) -> list[TrustedKey]:
        return [k for k in self.keys if k.public is not None]

    def describe(self) -> str:
        return ", ".join(k.label for k in self.keys)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeyringEntry(_Strict):
    station: str
    name: str = ""
    fingerprint: str
    public_key_pem: str
    first_seen: str | None = None
    last_seen: str | None = None


class Keyring(_Strict):
    format: str
    made_by: str = ""
    made_at: str | None = None
    keys: list[KeyringEntry]


def from_pubkey(path: Path) -> TrustAnchor:
    pem = _read_bounded(path, 64 << 10, "--pubkey")
    try:
        public = load_public(pem)
    except ValueError as exc:
        raise TrustError(f"--pubkey {path.name}: not an Ed25519 public key in PEM form ({exc})") from None
    return TrustAnchor((TrustedKey(label=f"--pubkey {path.name} ({fingerprint(public)})", public=public),))


def from_fingerprint(text: str) -> TrustAnchor:
    try:
        hex_digits = normalize_fingerprint(text)
    except ValueError as exc:
        raise TrustError(f"--fingerprint: {exc}") from None
    return TrustAnchor((TrustedKey(label=f"--fingerprint {text.strip()}", fingerprint_hex=hex_digits),))


def from_keyring(path: Path) -> TrustAnchor:
    data = _read_bounded(path, MAX_KEYRING_BYTES, "--keyring")
    try:
        ring = Keyring.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top)"
        raise TrustError(f"--keyring {path.name}: not a keyring file ({where}: {first['msg']})") from None
    if ring.format != KEYRING_FORMAT:
        raise TrustError(f"--keyring {path.name}: unknown format {ring.format[:40]!r} (expected {KEYRING_FORMAT})")
    keys = []
    for number, entry in enumerate(ring.keys):
        try:
            public = load_public(entry.public_key_pem.encode())
        except ValueError as exc:
            raise TrustError(f"--keyring {path.name}: keys[{number}] ({entry.station}): bad key ({exc})") from None
        if not fingerprint_matches(entry.fingerprint, public):
            raise TrustError(f"--keyring {path.name}: keys[{number}] ({entry.station}): the fingerprint does not "
                             "belong to the key beside it")
        keys.append(TrustedKey(label=f"keyring {path.name}: station {entry.station} ({fingerprint(public)})",
                               public=public, station=entry.station))
    if not keys:
        raise TrustError(f"--keyring {path.name}: holds no keys")
    return TrustAnchor(tuple(keys))


def keyring_document(entries: list[KeyringEntry], made_by: str, made_at: str) -> dict[str, object]:
    return Keyring(format=KEYRING_FORMAT, made_by=made_by, made_at=made_at, keys=entries).model_dump()


def _read_bounded(path: Path, limit: int, option: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise TrustError(f"cannot read {option} {path.name}: {exc.strerror}") from None
    if len(data) > limit:
        raise TrustError(f"{option} {path.name}: larger than {limit} bytes")
    return data
