"""``nvr check-archive`` and ``nvr verify-archive``: the off-site archive from the command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from nvr.base import config as configmod

COMMANDS = ("check-archive", "verify-archive")
ACCESS_ENV, SECRET_ENV = "NVR_ARCHIVE_ACCESS_KEY", "NVR_ARCHIVE_SECRET_KEY"
EXIT_PROBLEM = 1
EXIT_USAGE = 2


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser],
                add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    check = commands.add_parser("check-archive", help="check the archive target: reachable, credentials, bucket, "
                                                      "Object Lock (exit 1 saying what is wrong)")
    add_config(check)
    verify = commands.add_parser("verify-archive", help="re-hash archived objects and walk their chains; report "
                                                        "missing, modified or unlocked objects (exit 1)")
    add_config(verify)
    verify.add_argument("--camera", help="only this camera")
    verify.add_argument("--start", help="only segments ending after this (ISO-8601)")
    verify.add_argument("--end", help="only segments starting before this (ISO-8601)")
    archive = commands.add_parser("archive", help="the archive without a station")
    actions = archive.add_subparsers(dest="archive_command", required=True, metavar="ACTION")
    export = actions.add_parser(
        "export", help=f"build an (unsigned) evidence package from the archive alone; keys from ${ACCESS_ENV} "
                       f"and ${SECRET_ENV}")
    export.add_argument("--endpoint", required=True, help="http(s) URL of the S3 service")
    export.add_argument("--bucket", required=True)
    export.add_argument("--region", default="default")
    export.add_argument("--prefix", default="", help="the stations' key prefix ('' or ending in '/')")
    export.add_argument("--ca", help="PEM CA bundle of the store's certificate")
    export.add_argument("--station", required=True, help="station id")
    export.add_argument("--camera", action="append", required=True, help="camera id (repeat for several)")
    export.add_argument("--start", required=True, help="ISO-8601 time with Z or an offset")
    export.add_argument("--end", required=True, help="ISO-8601 time with Z or an offset")
    export.add_argument("-o", "--output", required=True, help="the package to write (.zip)")


def run(args: argparse.Namespace, config: configmod.Config) -> int:
    from recorder.archive_store import ArchiveError, ArchiveStore

    if config.archive is None:
        print("archive: not configured (no archive: section)", file=sys.stderr)
        return EXIT_USAGE
    store = ArchiveStore(config.archive)
    try:
        summary = store.check()
    except ArchiveError as exc:
        print(f"archive: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    if args.command == "check-archive":
        print(summary)
        return 0
    return _verify(args, config, store)


def _verify(args: argparse.Namespace, config: configmod.Config, store: object) -> int:
    from nvr.base.timeutil import parse_iso
    from recorder.archive import ArchiveIndex
    from recorder.archive_store import ArchiveStore
    from recorder.storage import INDEX_FILE
    from recorder.verify_archive import verify_archive

    assert isinstance(store, ArchiveStore)
    try:
        start = parse_iso(args.start) if args.start else None
        end = parse_iso(args.end) if args.end else None
    except ValueError as exc:
        print(f"--start/--end: {exc}", file=sys.stderr)
        return EXIT_USAGE
    index_path = config.storage.path / INDEX_FILE
    if not index_path.is_file():
        print(f"storage: no index at {index_path}", file=sys.stderr)
        return EXIT_PROBLEM
    index = ArchiveIndex(index_path)
    try:
        objects = index.objects(args.camera, start, end)
    finally:
        index.close()
    report = verify_archive(store, objects)
    print_findings(report.failures, report.notes)
    if report.ok:
        print(f"OK: archive verified: {report.checked} object(s) present, locked and intact")
        return 0
    print(f"FAILED: {len(report.failures)} problem(s) in {report.checked} object(s)")
    return EXIT_PROBLEM


def run_archive(args: argparse.Namespace) -> int:
    """``nvr archive export``: no config, no station; the keys come from the environment only."""
    import getpass
    import os
    import time
    from pathlib import Path

    from nvr.base import secrets
    from nvr.base.timeutil import parse_iso
    from recorder.archive_export import ArchiveExportError, build_from_archive
    from recorder.archive_store import ArchiveError, ArchiveStore

    access, secret = os.environ.get(ACCESS_ENV), os.environ.get(SECRET_ENV)
    if not access or not secret:
        print(f"set {ACCESS_ENV} and {SECRET_ENV} (never on the command line)", file=sys.stderr)
        return EXIT_USAGE
    secrets.register(access)
    secrets.register(secret)
    try:
        archive = configmod.Archive(endpoint=args.endpoint, bucket=args.bucket, region=args.region,
                                    prefix=args.prefix, ca=args.ca, access_key=access, secret_key=secret)
        start, end = parse_iso(args.start), parse_iso(args.end)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        print(f"archive export: {secrets.redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    if end <= start:
        print("--end: must be after --start", file=sys.stderr)
        return EXIT_USAGE
    store = ArchiveStore(archive)
    try:
        manifest = build_from_archive(store, prefix=args.prefix, station=args.station,
                                      cameras=list(dict.fromkeys(args.camera)), start=start, end=end,
                                      output=Path(args.output), user=f"cli:{getpass.getuser()}", now=time.time())
    except (ArchiveError, ArchiveExportError) as exc:
        print(f"archive export failed: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    for note in manifest["notes"]:
        print(f"note: {note}")
    count = sum(len(c["segments"]) for c in manifest["cameras"])
    print(f"wrote {args.output}: {count} segment(s) from the archive of station {args.station} (NOT signed: "
          f"built without the station; station key in the archive {manifest['station_key']['fingerprint']})")
    return 0


def print_findings(failures: list[str], notes: list[str]) -> None:
    for note in notes:
        print(f"note: {note}")
    for failure in failures:
        print(f"FAIL {failure}")


def verify_package(path: Any, anchor: Any, checkpoints: Any = None) -> int:
    """``nvr verify`` of a package built from the archive: intact and chained at best, never signed (exit 3)."""
    from recorder.archive_export import verify_archive_package
    from recorder.verify import Verdict

    report = verify_archive_package(path, anchor, checkpoints)
    print_findings(report.failures, report.notes)
    if report.failures:
        print(f"FAILED: {len(report.failures)} problem(s)")
        return int(Verdict.FAILED)
    trusted = "the trusted key" if anchor is not None else "a key NOT checked against any anchor"
    attested = f", {report.attested} attested by the station's signed checkpoints" if checkpoints else ""
    print(f"ARCHIVE: {report.segments} segment(s) intact and chained{attested}, built from the archive without the "
          f"station and NOT signed by it; the archive's station key {report.fingerprint} is {trusted} (exit 3)")
    return int(Verdict.UNAUTHENTICATED)
