"""``nvr check-archive`` and ``nvr verify-archive``: the off-site archive from the command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from nvr.base import config as configmod

COMMANDS = ("check-archive", "verify-archive")
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
    for note in report.notes:
        print(f"note: {note}")
    for failure in report.failures:
        print(f"FAIL {failure}")
    if report.ok:
        print(f"OK: archive verified: {report.checked} object(s) present, locked and intact")
        return 0
    print(f"FAILED: {len(report.failures)} problem(s) in {report.checked} object(s)")
    return EXIT_PROBLEM
