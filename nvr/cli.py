"""The ``nvr`` command line."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from typing import Any

from nvr import __version__
from nvr.base import config as configmod
from nvr.base import logsetup, memory, secrets

EXIT_CONFIG = 2


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, metavar="FILE", help="path to config.yaml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nvr", description="Station CCTV monitoring and recording daemon")
    parser.add_argument("--version", action="version", version=f"nvr {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon in the foreground")
    _add_config(run)

    check = commands.add_parser("check-config", help="validate a config file and exit")
    _add_config(check)

    init = commands.add_parser("init-storage", help="mark storage.path as this station's recording disk")
    _add_config(init)

    key = commands.add_parser("key", help="the station's evidence signing key")
    key_commands = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    show = key_commands.add_parser("show", help="print the key's fingerprint and public key")
    _add_config(show)

    verify_storage = commands.add_parser(
        "verify-storage", help="re-hash every segment and walk the index chains; report every difference"
    )
    _add_config(verify_storage)
    verify_storage.add_argument("--camera", help="only this camera")
    verify_storage.add_argument("--checkpoints", metavar="FILE",
                                help="the station's checkpoints as the central console exported them: also "
                                     "catch deleted or rewritten newest segments")

    export = commands.add_parser("export", help="write a signed evidence package (zip)")
    _add_config(export)
    export.add_argument("--camera", action="append", required=True, help="camera id (repeat for several)")
    export.add_argument("--start", required=True, help="ISO-8601 time with Z or an offset")
    export.add_argument("--end", required=True, help="ISO-8601 time with Z or an offset")
    export.add_argument("--reason", required=True, help="why this evidence is exported")
    export.add_argument("-o", "--output", required=True, help="the package to write (.zip)")

    from nvr import archive_cli, bodycam_cli
    from nvr.identity import accounts_cli

    accounts_cli.add_parsers(commands, _add_config)
    archive_cli.add_parsers(commands, _add_config)
    bodycam_cli.add_parsers(commands, _add_config)

    console = commands.add_parser("console", help="run the central monitoring console for many stations")
    _add_config(console)
    console.add_argument("--check", action="store_true", help="validate the console config and exit")

    discover = commands.add_parser(
        "discover", help="find ONVIF cameras (WS-Discovery) and print ready-to-paste camera entries")
    discover.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for answers (default 3)")
    discover.add_argument("--address", help="probe this one address (unicast) instead of multicast")
    discover.add_argument("--port", type=int, default=3702, help="WS-Discovery port for --address (default 3702)")
    discover.add_argument("--user", help="ONVIF user name, to read profiles and stream URIs")
    discover.add_argument("--password-env", metavar="NAME",
                          help="environment variable holding that user's password (printed as ${NAME})")

    verify = commands.add_parser(
        "verify", help="verify an evidence package offline (exit 0 OK, 1 FAILED, 3 intact but signer unknown)")
    verify.add_argument("package", help="PACKAGE.zip")
    anchor = verify.add_mutually_exclusive_group()
    anchor.add_argument("--pubkey", metavar="PEM", help="the station's public key, obtained from the station")
    anchor.add_argument("--fingerprint", metavar="HEX",
                        help="the station key's fingerprint (SHA256:...), obtained out of band")
    anchor.add_argument("--keyring", metavar="FILE", help="station keys as the central console exports them")
    verify.add_argument("--checkpoints", metavar="FILE",
                        help="for a package built from the archive: the station's signed checkpoints (from the "
                             "central console), to count the segments the station itself attested")
    return parser


def load_config_or_exit(path: str) -> configmod.Config:
    try:
        return configmod.load(path)
    except configmod.ConfigError as exc:
        print(f"{path}: invalid configuration ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def summary(config: configmod.Config) -> str:
    recorded = sum(1 for c in config.cameras if c.record)
    return (
        f"config OK: station {config.station.id} ({config.station.name}), {len(config.cameras)} camera(s), "
        f"{recorded} recorded, storage {config.storage.path}, web {config.web.listen}"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        print(summary(load_config_or_exit(args.config)))
        return 0
    if args.command == "init-storage":
        from recorder.storage import StorageError, init_storage

        config = load_config_or_exit(args.config)
        try:
            marker = init_storage(config.storage.path, config.station.id)
        except (StorageError, OSError) as exc:
            print(f"cannot initialise {config.storage.path}: {exc}", file=sys.stderr)
            return 1
        print(f"storage {config.storage.path} belongs to station {marker.station}; disk id {marker.id}")
        return 0
    if args.command == "verify":
        return _verify(args)
    if args.command == "discover":
        return _discover(args)
    from nvr import archive_cli, bodycam_cli
    from nvr.identity import accounts_cli

    if args.command in archive_cli.COMMANDS:
        return archive_cli.run(args, load_config_or_exit(args.config))
    if args.command == "archive":
        return archive_cli.run_archive(args)
    if args.command == "console":
        return _console(args.config, args.check)
    if args.command in accounts_cli.COMMANDS:
        # The central console has users, tokens and an audit log of its own: same commands, its file.
        if _is_console_file(args.config):
            return accounts_cli.run(args, _load_console_or_exit(args.config))
        return accounts_cli.run(args, load_config_or_exit(args.config))
    if args.command in ("key", "verify-storage", "export", *bodycam_cli.COMMANDS):
        config = load_config_or_exit(args.config)
        return _storage_command(args, config)
    if args.command == "run":
        config = load_config_or_exit(args.config)
        logsetup.setup(config.log.level, config.log.ffmpeg_level)
        substreams = sum(1 for camera in config.cameras if camera.live_url)
        memory.set_malloc_arenas(memory.arenas_for(len(config.cameras), substreams))  # before the cameras' threads
        from pathlib import Path

        from nvr import service
        from nvr.station import Station
        from web.app import create_app

        station = Station(config, Path(args.config).resolve())
        asyncio.run(service.run(station, lambda: create_app(station)))
        return 0
    return EXIT_CONFIG  # pragma: no cover - argparse rejects unknown commands


def _discover(args: argparse.Namespace) -> int:
    """Probe, describe with credentials, print the devices as YAML comments and the entries as YAML."""
    import os

    from streams import discovery

    if args.timeout <= 0 or args.timeout > 60:
        print("--timeout must be between 0 and 60 seconds", file=sys.stderr)
        return EXIT_CONFIG
    password = None
    if args.user:
        if not args.password_env or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args.password_env):
            print("--user needs --password-env NAME (an environment variable holding the password)", file=sys.stderr)
            return EXIT_CONFIG
        password = os.environ.get(args.password_env)
        if password is None:
            print(f"the environment variable {args.password_env} is not set", file=sys.stderr)
            return EXIT_CONFIG
        secrets.register(password)
    try:
        found = discovery.probe(args.timeout, args.address, args.port)
    except OSError as exc:
        print(f"cannot send the WS-Discovery probe: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if args.user and password is not None:
        async def describe_all() -> None:
            await asyncio.gather(*(discovery.describe(d, args.user, password) for d in found.devices))

        asyncio.run(describe_all())
    ignored = f" ({found.ignored} other answer(s) ignored: not ONVIF devices)" if found.ignored else ""
    print(f"# {len(found.devices)} ONVIF device(s) answered{ignored}")
    for device in found.devices:
        what = " ".join(x for x in (device.manufacturer or device.scope("name"),
                                    device.model or device.scope("hardware")) if x)
        extra = "".join(f", {label} {value}" for label, value in (("firmware", device.firmware),
                                                                   ("serial", device.serial)) if value)
        print(f"# {device.device_url}: {what or 'unknown model'}{extra}")
        for profile in device.profiles:
            size = f" {profile.width}x{profile.height}" if profile.width else ""
            print(f"#   profile {profile.token} ({profile.name}){size}: {profile.uri}")
        if device.error:
            print(f"#   not read: {device.error}")
    if not args.user:
        print("# give --user and --password-env to read profiles and stream URIs")
        return 0
    print(discovery.camera_entries(found.devices, args.user, args.password_env), end="")
    return 0


def _is_console_file(path: str) -> bool:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "console" in data and "stations" in data


def _load_console_or_exit(path: str) -> Any:
    from central import config as console_config

    try:
        return console_config.load(path)
    except configmod.ConfigError as exc:
        print(f"{path}: invalid console configuration ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _console(path: str, check: bool) -> int:
    config = _load_console_or_exit(path)
    if check:
        print(f"console config OK: console {config.console.id}, {len(config.stations)} station(s) "
              f"({', '.join(s.id for s in config.stations)}), listen {config.console.listen}, "
              f"users and audit in {config.auth_database}")
        return 0
    logsetup.setup(config.log.level, None)
    from central.app import create_console_app
    from central.console import Console
    from nvr import service

    console = Console(config)
    asyncio.run(service.run(console, lambda: create_console_app(console.runtime)))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from recorder import trust
    from recorder.verify import Verdict, verify_package

    try:
        if args.pubkey:
            anchor: trust.TrustAnchor | None = trust.from_pubkey(Path(args.pubkey))
        elif args.fingerprint:
            anchor = trust.from_fingerprint(args.fingerprint)
        elif args.keyring:
            anchor = trust.from_keyring(Path(args.keyring))
        else:
            anchor = None
    except trust.TrustError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from recorder.archive_export import is_archive_package

    if is_archive_package(Path(args.package)):  # built from the archive without the station (issue 19)
        from nvr import archive_cli

        return archive_cli.verify_package(Path(args.package), anchor,
                                          Path(args.checkpoints) if args.checkpoints else None)
    if args.checkpoints:
        print("note: --checkpoints is only used for packages built from the archive (nvr archive export)")
    report = verify_package(Path(args.package), anchor)
    for failure in report.failures:
        print(f"FAIL {failure}")
    for note in report.notes:
        print(f"note: {note}")
    verdict = report.verdict
    if verdict is Verdict.OK:
        print(f"OK: package verified: authentic (signed by {report.signer}) and intact")
    elif verdict is Verdict.UNAUTHENTICATED:
        print("UNAUTHENTICATED: the contents are intact, but the signer is NOT authenticated: verify again with "
              "--pubkey, --fingerprint or --keyring obtained from the station (exit 3)")
    else:
        print(f"FAILED: {len(report.failures)} problem(s)")
    return int(verdict)


def _storage_command(args: argparse.Namespace, config: configmod.Config) -> int:
    import getpass
    import time
    from pathlib import Path

    from nvr.base.timeutil import parse_iso
    from recorder.export import ExportError, ExportRequest, build_package, package_identity
    from recorder.index import SegmentIndex
    from recorder.keys import StationKey
    from recorder.storage import INDEX_FILE, StorageError, check_storage
    from recorder.verify import verify_storage

    root = config.storage.path
    try:
        check_storage(root, config.station.id, config.storage.id)
    except StorageError as exc:
        print(f"storage: {exc}", file=sys.stderr)
        return 1
    if args.command == "key":
        key = StationKey.load_or_create(root)
        print(f"station {config.station.id}: Ed25519 {key.fingerprint}")
        print(key.public_pem.decode(), end="")
        return 0
    index = SegmentIndex(root / INDEX_FILE)
    try:
        if args.command == "bodycam":
            from nvr import bodycam_cli

            return bodycam_cli.run(args, config, index)
        if args.command == "verify-storage":
            witnessed = None
            if args.checkpoints:
                from recorder.checkpoint import CheckpointError, load_file
                from recorder.keys import load_station_public

                try:
                    witnessed = load_file(Path(args.checkpoints), config.station.id, load_station_public(root))
                except CheckpointError as exc:
                    print(f"error: --checkpoints: {exc}", file=sys.stderr)
                    return EXIT_CONFIG
            report = verify_storage(root, index, args.camera, witnessed)
            for note in report.notes:
                print(f"note: {note}")
            for failure in report.failures:
                print(f"FAIL {failure}")
            print("OK: storage verified" if report.ok else f"FAILED: {len(report.failures)} problem(s)")
            return 0 if report.ok else 1
        # export
        unknown = [c for c in args.camera if not config.is_source(c)]  # cameras and body cameras
        if unknown:
            print(f"--camera: unknown camera(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        try:
            start, end = parse_iso(args.start), parse_iso(args.end)
        except ValueError as exc:
            print(f"--start/--end: {exc}", file=sys.stderr)
            return 2
        if end <= start:
            print("--end: must be after --start", file=sys.stderr)
            return 2
        if not args.reason.strip():
            print("--reason: must not be empty", file=sys.stderr)
            return 2
        key = StationKey.load_or_create(root)
        request = ExportRequest(list(dict.fromkeys(args.camera)), start, end, args.reason.strip(),
                                f"cli:{getpass.getuser()}")
        # Held while it is copied, so that a running daemon's retention leaves the range alone.
        station, camera_info = package_identity(config)
        holds = [index.add_hold(c, start, end, "export from the command line in progress", request.user)
                 for c in request.cameras]
        from recorder.archive_read import ArchiveReader

        # Segments deleted locally after they were archived come back from the archive.
        archive = ArchiveReader(root, config.archive) if config.archive is not None else None
        from recorder.backfill import BackfillJobs, job_causes

        # The daemon's alarm history is not read here; what the cameras' cards hold or lack is in the index.
        jobs_store = BackfillJobs(index)
        jobs_store.ensure_schema()
        jobs = jobs_store.all()
        try:
            manifest = build_package(
                root=root, index=index, key=key, station=station, camera_info=camera_info,
                request=request, output=Path(args.output), now=time.time(), archive_reader=archive,
                causes=lambda camera: job_causes(jobs, camera, start, end),
            )
        except ExportError as exc:
            print(f"export failed: {exc}", file=sys.stderr)
            return 1
        finally:
            for hold in holds:
                index.release_hold(hold.id)
            if archive is not None:
                archive.close()
        count = sum(len(c["segments"]) for c in manifest["cameras"])
        from_archive = sum(s.get("copy") == "archive" for c in manifest["cameras"] for s in c["segments"])
        print(f"wrote {args.output}: {count} segment(s)"
              f"{f' ({from_archive} from the archive)' if from_archive else ''}, signed by {key.fingerprint}")
        return 0
    finally:
        index.close()
