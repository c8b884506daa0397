"""Users, browser sessions and API tokens, in SQLite (WAL) next to the recordings.

The same database holds the audit log (:mod:`nvr.identity.audit`).  Passwords are
hashed with Argon2id; session ids and API tokens are random and only their
SHA-256 is stored (they carry 256 bits of entropy, so a slow hash adds
nothing).  All database work runs on the database's own thread
(:class:`~nvr.base.sqlite_worker.SqliteWorker`: ``call`` / ``submit``), never on
the event loop; the CLI uses the same methods directly.  Several processes (the daemon
and ``nvr user ...``) may use the file at once: SQLite serialises writers.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from nvr.base.sqlite_worker import SqliteWorker, connect
from nvr.identity.roles import Identity, Role

T = TypeVar("T")

AUTH_FILE = "auth.sqlite3"
TOKEN_PREFIX = "nvr_"
USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
# Last-use times are written at most this often, so that every request is not a write.
_TOUCH_SECONDS = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    cameras TEXT,
    password_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    password_changed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    created_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    address TEXT
);
-- A table of its own (not a column of users) so that databases made before it need no migration.
CREATE TABLE IF NOT EXISTS user_preferences (
    user TEXT PRIMARY KEY REFERENCES users(name) ON DELETE CASCADE,
    lang TEXT
);
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    cameras TEXT,
    token_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    created_by TEXT NOT NULL,
    last_used_at REAL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    role TEXT,
    action TEXT NOT NULL,
    camera TEXT,
    outcome TEXT NOT NULL,
    address TEXT,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_actor ON audit(actor, id);
CREATE INDEX IF NOT EXISTS audit_action ON audit(action, id);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


class AuthError(Exception):
    """A user or token operation that cannot be done; the message says why."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    cameras: frozenset[str] | None
    created_at: float
    password_changed_at: float


@dataclass(frozen=True, slots=True)
class Token:
    id: int
    name: str
    role: Role
    cameras: frozenset[str] | None
    created_at: float
    created_by: str
    last_used_at: float | None
    revoked_at: float | None


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _cameras_out(cameras: frozenset[str] | None) -> str | None:
    return json.dumps(sorted(cameras)) if cameras else None


def _cameras_in(text: str | None) -> frozenset[str] | None:
    return frozenset(json.loads(text)) if text else None


class AuthDatabase(SqliteWorker):
    def __init__(self, path: Path, hasher: PasswordHasher | None = None) -> None:
        self.path = path
        super().__init__("authdb", lambda: connect(path, _SCHEMA, foreign_keys=True, mode=0o600))
        self.hasher = hasher or PasswordHasher()  # Argon2id, RFC 9106 low-memory profile
        # Verifying against this keeps the time of a login for an unknown user the same.
        self._dummy_hash: str | None = None

    # -- users ----------------------------------------------------------------------------

    def add_user(self, name: str, role: Role, password: str, cameras: frozenset[str] | None) -> User:
        now = time.time()
        password_hash = self.hasher.hash(password)
        try:
            self.db.execute(
                "INSERT INTO users (name, role, cameras, password_hash, created_at, password_changed_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (name, role.value, _cameras_out(cameras), password_hash, now, now),
            )
        except sqlite3.IntegrityError:
            raise AuthError(f"user {name!r} already exists") from None
        return User(name, role, cameras, now, now)

    def users(self) -> list[User]:
        rows = self.db.execute(
            "SELECT name, role, cameras, created_at, password_changed_at FROM users ORDER BY name"
        ).fetchall()
        return [User(r[0], Role(r[1]), _cameras_in(r[2]), r[3], r[4]) for r in rows]

    def remove_user(self, name: str) -> None:
        if self.db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
            raise AuthError(f"no user {name!r}")

    def set_password(self, name: str, password: str) -> None:
        """Change a password and end every session of that user."""
        password_hash = self.hasher.hash(password)
        with self.transaction() as db:
            changed = db.execute(
                "UPDATE users SET password_hash = ?, password_changed_at = ? WHERE name = ?",
                (password_hash, time.time(), name),
            ).rowcount
            db.execute("DELETE FROM sessions WHERE user = ?", (name,))
        if not changed:
            raise AuthError(f"no user {name!r}")

    def language(self, name: str) -> str | None:
        """The user's chosen language for the console, or None (then the browser's choice applies)."""
        row = self.db.execute("SELECT lang FROM user_preferences WHERE user = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_language(self, name: str, lang: str | None) -> None:
        """Store (or, with None, forget) the user's language; the caller checks that it is supported."""
        if not self.db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
            raise AuthError(f"no user {name!r}")
        self.db.execute("INSERT INTO user_preferences (user, lang) VALUES (?, ?) "
                        "ON CONFLICT(user) DO UPDATE SET lang = excluded.lang", (name, lang))

    def password_record(self, name: str) -> tuple[User, str] | None:
        """The user and their password hash (database thread); verify with :meth:`verify_password`."""
        row = self.db.execute(
            "SELECT name, role, cameras, created_at, password_changed_at, password_hash FROM users WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            return None
        return User(row[0], Role(row[1]), _cameras_in(row[2]), row[3], row[4]), row[5]

    def verify_password(self, password_hash: str | None, password: str) -> bool:
        """Argon2id verification (slow, thread-safe: run it in a worker thread, not the database thread).

        An unknown user (``password_hash`` None) costs the same time as a wrong password.
        """
        if password_hash is None:
            if self._dummy_hash is None:
                self._dummy_hash = self.hasher.hash(secrets.token_hex(16))
            password_hash = self._dummy_hash
            password = "\x00" + password  # never matches
        try:
            return bool(self.hasher.verify(password_hash, password))
        except (VerificationError, InvalidHashError):
            return False

    def check_password(self, name: str, password: str) -> User | None:
        """The user if the password is right (CLI and tests; blocking)."""
        record = self.password_record(name)
        ok = self.verify_password(record[1] if record else None, password)
        return record[0] if record and ok else None

    # -- sessions -------------------------------------------------------------------------

    def create_session(self, user: str, address: str | None, replaces: str | None = None) -> str:
        """A new random session id for ``user`` (only its hash is stored); ends ``replaces``."""
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        db = self.db
        if replaces:
            db.execute("DELETE FROM sessions WHERE id_hash = ?", (digest(replaces),))
        db.execute(
            "INSERT INTO sessions (id_hash, user, created_at, last_seen, address) VALUES (?, ?, ?, ?, ?)",
            (digest(session_id), user, now, now, address),
        )
        return session_id

    def session_identity(self, session_id: str, idle_seconds: float, max_seconds: float) -> Identity | None:
        """The session's user, or None when unknown or past its idle or absolute timeout (then deleted)."""
        id_hash = digest(session_id)
        db = self.db
        row = db.execute(
            "SELECT s.created_at, s.last_seen, u.name, u.role, u.cameras FROM sessions s "
            "JOIN users u ON u.name = s.user WHERE s.id_hash = ?",
            (id_hash,),
        ).fetchone()
        if row is None:
            return None
        now = time.time()
        created_at, last_seen = row[0], row[1]
        if now - last_seen > idle_seconds or now - created_at > max_seconds:
            db.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))
            return None
        if now - last_seen > _TOUCH_SECONDS:
            db.execute("UPDATE sessions SET last_seen = ? WHERE id_hash = ?", (now, id_hash))
        return Identity(row[2], Role(row[3]), _cameras_in(row[4]), "session", id_hash)

    def end_session(self, session_id: str) -> str | None:
        """Delete a session; returns its user."""
        id_hash = digest(session_id)
        row = self.db.execute("SELECT user FROM sessions WHERE id_hash = ?", (id_hash,)).fetchone()
        self.db.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))
        return str(row[0]) if row else None

    def ended_identities(self, sessions: dict[str, str], tokens: set[str], idle_seconds: float,
                         max_seconds: float) -> dict[tuple[str, str], str]:
        """Which of these identities have ended, and why (read-only: checking is not using).

        ``sessions`` maps session-id hashes to their user, ``tokens`` holds token names.  Answers
        ``{("session", hash) | ("token", name): reason}`` for the ones that ended: ``user removed``,
        ``session expired``, ``session ended`` (logged out elsewhere, password changed),
        ``token revoked``, ``token removed``.
        """
        ended: dict[tuple[str, str], str] = {}
        db = self.db
        now = time.time()
        users = {row[0] for row in db.execute("SELECT name FROM users")} if sessions else set()
        for id_hash, user in sessions.items():
            row = db.execute("SELECT created_at, last_seen FROM sessions WHERE id_hash = ?", (id_hash,)).fetchone()
            if user not in users:
                ended[("session", id_hash)] = "user removed"
            elif row is None:
                ended[("session", id_hash)] = "session ended"
            elif now - row[1] > idle_seconds or now - row[0] > max_seconds:
                ended[("session", id_hash)] = "session expired"
        for name in tokens:
            row = db.execute("SELECT revoked_at FROM tokens WHERE name = ?", (name,)).fetchone()
            if row is None:
                ended[("token", name)] = "token removed"
            elif row[0] is not None:
                ended[("token", name)] = "token revoked"
        return ended

    def purge_sessions(self, idle_seconds: float, max_seconds: float) -> int:
        now = time.time()
        return self.db.execute(
            "DELETE FROM sessions WHERE last_seen < ? OR created_at < ?", (now - idle_seconds, now - max_seconds)
        ).rowcount

    # -- API tokens -----------------------------------------------------------------------

    def create_token(self, name: str, role: Role, cameras: frozenset[str] | None, created_by: str) -> str:
        """A new token, returned once; only its hash is stored."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            self.db.execute(
                "INSERT INTO tokens (name, role, cameras, token_hash, created_at, created_by) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (name, role.value, _cameras_out(cameras), digest(token), time.time(), created_by),
            )
        except sqlite3.IntegrityError:
            raise AuthError(f"a token named {name!r} already exists (revoked tokens keep their name)") from None
        return token

    def tokens(self) -> list[Token]:
        rows = self.db.execute(
            "SELECT id, name, role, cameras, created_at, created_by, last_used_at, revoked_at FROM tokens ORDER BY id"
        ).fetchall()
        return [Token(r[0], r[1], Role(r[2]), _cameras_in(r[3]), r[4], r[5], r[6], r[7]) for r in rows]

    def revoke_token(self, name_or_id: str) -> Token:
        db = self.db
        key = int(name_or_id) if name_or_id.isdigit() else None
        row = db.execute(
            "SELECT id FROM tokens WHERE (name = ? OR id = ?) AND revoked_at IS NULL", (name_or_id, key)
        ).fetchone()
        if row is None:
            raise AuthError(f"no active token {name_or_id!r}")
        db.execute("UPDATE tokens SET revoked_at = ? WHERE id = ?", (time.time(), row[0]))
        return next(t for t in self.tokens() if t.id == row[0])

    def token_identity(self, token: str) -> Identity | None:
        token_hash = digest(token)
        row = self.db.execute(
            "SELECT id, name, role, cameras, last_used_at FROM tokens WHERE token_hash = ? AND revoked_at IS NULL",
            (token_hash,),
        ).fetchone()
        if row is None:
            return None
        now = time.time()
        if row[4] is None or now - row[4] > _TOUCH_SECONDS:
            self.db.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", (now, row[0]))
        return Identity(f"token:{row[1]}", Role(row[2]), _cameras_in(row[3]), "token")
