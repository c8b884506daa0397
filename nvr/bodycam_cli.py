"""``nvr bodycam ...``: who wears which body camera, from the shell (admins at the station).

The same table the API manages (recorder/bodycam.py, in the storage's index), and the same audit entry
(``bodycam.assign``) with the shell user as the actor.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nvr.base.config import Config
from nvr.base.timeutil import iso, parse_iso
from nvr.identity.audit import append, canonical
from nvr.identity.authdb import AuthDatabase

if TYPE_CHECKING:
    from recorder.index import SegmentIndex

COMMANDS = ("bodycam",)


def add_parsers(commands: Any, add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    bodycam = commands.add_parser("bodycam", help="body-worn cameras: who wore which device when")
    actions = bodycam.add_subparsers(dest="action", required=True, metavar="ACTION")
    assign = actions.add_parser("assign", help="record that an officer wears a device from a time on")
    add_config(assign)
    assign.add_argument("device", help="body camera id")
    assign.add_argument("--officer", required=True, help="name or badge number")
    assign.add_argument("--start", help="ISO-8601 time with Z or an offset (default: now)")
    assign.add_argument("--end", help="ISO-8601 time (default: until the next assignment)")
    assign.add_argument("--note", default="", help="a note kept with the assignment")
    listing = actions.add_parser("assignments", help="list a device's assignments")
    add_config(listing)
    listing.add_argument("device", help="body camera id")


def run(args: argparse.Namespace, config: Config, index: SegmentIndex) -> int:
    """With the storage checked and its index open (nvr/cli.py)."""
    from recorder.bodycam import AssignmentConflict, BodycamStore

    if config.bodycam(args.device) is None:
        print(f"error: no body camera with id {args.device!r} in the config", file=sys.stderr)
        return 2
    root = config.storage.path
    store = BodycamStore(root, index)
    if args.action == "assignments":
        for a in store.assignments(args.device):
            print(f"{a.id}\t{a.officer}\t{iso(a.start)}\t{iso(a.end) or 'now'}\t{a.created_by}\t{a.note}")
        return 0
    try:
        start = parse_iso(args.start) if args.start else time.time()
        end = parse_iso(args.end) if args.end else None
    except ValueError as exc:
        print(f"error: --start/--end: {exc}", file=sys.stderr)
        return 2
    officer = args.officer.strip()
    if not officer or len(officer) > 100 or not officer.isprintable():
        print("error: --officer: 1..100 printable characters", file=sys.stderr)
        return 2
    if end is not None and end <= start:
        print("error: --end: must be after --start", file=sys.stderr)
        return 2
    actor = f"cli:{getpass.getuser()}"
    try:
        made = store.assign(args.device, officer, start, end, args.note, actor)
    except AssignmentConflict as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    auth = AuthDatabase(config.auth_database)
    try:
        append(auth.db, iso(time.time()) or "", actor, None, "bodycam.assign", args.device, "ok", None,
               canonical({"assignment_id": made.id, "officer": made.officer, "start": iso(made.start),
                          "end": iso(made.end), "note": made.note}))
    finally:
        auth.close()
    print(f"{args.device}: worn by {made.officer} from {iso(made.start)}"
          f"{' to ' + (iso(made.end) or '') if made.end else ''}")
    return 0
