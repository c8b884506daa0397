"""The ``nvr`` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys

from nvr import __version__, config as configmod, logsetup

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
    if args.command == "run":
        config = load_config_or_exit(args.config)
        logsetup.setup(config.log.level, config.log.ffmpeg_level)
        from nvr.daemon import serve

        asyncio.run(serve(config))
        return 0
    return EXIT_CONFIG  # pragma: no cover - argparse rejects unknown commands
