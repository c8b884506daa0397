"""``nvr user ...``, ``nvr token ...`` and ``nvr audit verify``: accounts and the audit trail from the shell.

Every change is written to the audit log as done by ``cli:<unix user>``.
Run these as the daemon's user (``sudo -u nvr nvr user add ...``) so that
the database stays readable by the daemon.
"""

from __future__ import annotations

import argparse
import getpass
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from nvr.base.config import Config
from nvr.base.timeutil import iso
from nvr.identity.audit import append, canonical, verify
from nvr.identity.authdb import USERNAME_PATTERN, AuthDatabase, AuthError
from nvr.identity.roles import Role, parse_cameras
from recorder.checkpoint import CheckpointError, check_audit, load_file
from recorder.keys import load_station_public

COMMANDS = ("user", "token", "audit")
_MIN_PASSWORD = 10


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser],
                add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    roles = [r.value for r in Role]

    user = commands.add_parser("user", help="manage console users")
    users = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = users.add_parser("add", help="add a user (password from a prompt or --password-stdin)")
    add_config(add)
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=roles)
    add.add_argument("--cameras", help="comma-separated camera ids the user may access (default: all)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    listing = users.add_parser("list", help="list users")
    add_config(listing)
    remove = users.add_parser("remove", help="remove a user and end their sessions")
    add_config(remove)
    remove.add_argument("name")
    passwd = users.add_parser("passwd", help="set a user's password and end their sessions")
    add_config(passwd)
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true", help="read the password from standard input")

    token = commands.add_parser("token", help="manage API tokens (Prometheus, central console)")
    tokens = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = tokens.add_parser("create", help="create a token and print it once")
    add_config(create)
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=roles)
    create.add_argument("--cameras", help="comma-separated camera ids the token may access (default: all)")
    listing = tokens.add_parser("list", help="list tokens (never their values)")
    add_config(listing)
    revoke = tokens.add_parser("revoke", help="revoke a token by name or id")
    add_config(revoke)
    revoke.add_argument("token", metavar="NAME_OR_ID")

    audit = commands.add_parser("audit", help="the audit trail")
    audits = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = audits.add_parser("verify", help="walk the hash chain; exit 1 naming the first broken entry")
    add_config(check)
    check.add_argument("--checkpoints", metavar="FILE",
                       help="the station's checkpoints as the central console exported them: also catch "
                            "deleted or rewritten newest entries")


def run(args: argparse.Namespace, config: Config) -> int:
    path = config.auth_database
    if args.command == "audit":
        if not path.exists():
            print(f"{path}: no audit log yet", file=sys.stderr)
            return 1
        report = verify(path)
        for entry_id, problem in report.failures:
            print(f"FAIL entry {entry_id}: {problem}")
        witnessed_failures: list[str] = []
        if getattr(args, "checkpoints", None):
            witnessed_failures = _check_witnessed(args.checkpoints, config)
            if witnessed_failures and witnessed_failures[0].startswith("error:"):
                print(witnessed_failures[0], file=sys.stderr)
                return 2
            for problem in witnessed_failures:
                print(f"FAIL {problem}")
        if report.ok and not witnessed_failures:
            witnessed = " and every checkpointed entry present" if getattr(args, "checkpoints", None) else ""
            print(f"OK: {report.entries} audit entries, chain intact{witnessed}; head {report.head}")
            return 0
        first = report.failures[0][0] if report.failures else "the end"
        print(f"FAILED: the audit log was tampered with at entry {first}")
        return 1
    db = AuthDatabase(path)
    actor = f"cli:{getpass.getuser()}"
    try:
        return _accounts(args, db, actor, config)
    except AuthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        db.close()


def _check_witnessed(file: str, config: Config) -> list[str]:
    """Failures of the audit log against the checkpoints in ``file``; ["error: ..."] if they cannot be read."""
    station = getattr(config, "station", None)
    if station is None:
        return ["error: --checkpoints: checkpoints are made by stations; this is not a station's config"]
    try:
        witnessed = load_file(Path(file), station.id, load_station_public(config.storage.path))
    except CheckpointError as exc:
        return [f"error: --checkpoints: {exc}"]
    for note in witnessed.notes:
        print(f"note: {note}")
    return [*witnessed.failures, *check_audit(config.auth_database, witnessed)]


def _record(db: AuthDatabase, actor: str, action: str, **details: object) -> None:
    append(db.db, iso(time.time()) or "", actor, None, action, None, "ok", None, canonical(details))


def _cameras(text: str | None, config: Config) -> frozenset[str] | None:
    cameras = parse_cameras(text)
    # A station's body cameras are in the allow-lists' namespace too (the central console has none).
    known = getattr(config, "is_source", config.camera)
    unknown = sorted(c for c in cameras or () if not known(c))
    if unknown:
        raise AuthError(f"--cameras: unknown camera(s): {', '.join(unknown)}")
    return cameras


def _password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise AuthError("the passwords differ")
    if len(password) < _MIN_PASSWORD:
        raise AuthError(f"the password must have at least {_MIN_PASSWORD} characters")
    return password


def _accounts(args: argparse.Namespace, db: AuthDatabase, actor: str, config: Config) -> int:
    if args.command == "user":
        if args.action == "add":
            if not re.match(USERNAME_PATTERN, args.name):
                raise AuthError("the name may use letters, digits and . _ @ - (at most 64)")
            cameras = _cameras(args.cameras, config)
            user = db.add_user(args.name, Role(args.role), _password(args.password_stdin), cameras)
            _record(db, actor, "user.add", user=user.name, role=user.role.value,
                    cameras=sorted(cameras) if cameras else None)
            print(f"user {user.name} added ({user.role.value})")
        elif args.action == "list":
            for u in db.users():
                cams = ",".join(sorted(u.cameras)) if u.cameras else "all cameras"
                print(f"{u.name}\t{u.role.value}\t{cams}\tpassword set {iso(u.password_changed_at)}")
        elif args.action == "remove":
            db.remove_user(args.name)
            _record(db, actor, "user.remove", user=args.name)
            print(f"user {args.name} removed")
        else:
            db.set_password(args.name, _password(args.password_stdin))
            _record(db, actor, "user.passwd", user=args.name)
            print(f"password of {args.name} changed; their sessions have ended")
        return 0
    if args.action == "create":
        cameras = _cameras(args.cameras, config)
        token = db.create_token(args.name, Role(args.role), cameras, actor)
        _record(db, actor, "token.create", token=args.name, role=args.role,
                cameras=sorted(cameras) if cameras else None)
        print(token)
        print(f"token {args.name!r} ({args.role}) created; it is shown only this once", file=sys.stderr)
    elif args.action == "list":
        for t in db.tokens():
            cams = ",".join(sorted(t.cameras)) if t.cameras else "all cameras"
            state = f"revoked {iso(t.revoked_at)}" if t.revoked_at else "active"
            print(f"{t.id}\t{t.name}\t{t.role.value}\t{cams}\t{state}\tlast used {iso(t.last_used_at) or 'never'}")
    else:
        revoked = db.revoke_token(args.token)
        _record(db, actor, "token.revoke", token=revoked.name, token_id=revoked.id)
        print(f"token {revoked.name!r} revoked")
    return 0


def create_token(path: Path, name: str, role: Role, cameras: frozenset[str] | None = None) -> str:
    """For tests and set-up scripts: a token in the database at ``path``."""
    db = AuthDatabase(path)
    try:
        token = db.create_token(name, role, cameras, "setup")
        _record(db, "setup", "token.create", token=name, role=role.value)
        return token
    finally:
        db.close()
