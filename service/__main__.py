"""The `process-status` command: `serve` and `inspect`."""

from __future__ import annotations

import argparse
import logging.config
import os
import sys
from collections.abc import Sequence

from service import config
from service.storage.files import OsFiles
from service.storage.recovery import RecoveryError, recover
from service.store import StatusStore

USAGE_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    flags = "\n".join(f"  {o.flag:<26} {o.env}" for o in config.OPTIONS)
    parser = argparse.ArgumentParser(
        prog="process-status",
        description="Tells API gateways and clients whether an event-driven read model has "
                    "caught up with a write.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"serve flags and their environment variables:\n{flags}\n"
               f"  tokens                     {config.ENV_PREFIX}WRITE_TOKENS, "
               f"{config.ENV_PREFIX}READ_TOKENS (comma-separated)\n\n"
               "Run `process-status serve --help` for what each flag does and its default.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the HTTP service under gunicorn",
                                description="Run the HTTP service (one gunicorn worker).")
    config.add_arguments(serve)
    inspect = commands.add_parser(
        "inspect", help="check a data dir offline and report what it holds",
        description="Read the snapshot and journal of a data dir without changing them; exit 1 "
                    "if anything is damaged.",
    )
    data_dir = config.option("--data-dir")
    inspect.add_argument(data_dir.flag, default=os.environ.get(data_dir.env,
                                                               config.DEFAULTS.data_dir),
                         help=f"the data dir to check [env {data_dir.env}]")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "inspect":
        return inspect(args.data_dir)
    try:
        settings = config.from_sources(args, os.environ)
    except config.ConfigError as exc:
        parser.exit(USAGE_ERROR, f"process-status serve: error: {exc}\n")
    from service.logs import logconfig_dict
    from service.web.server import Server

    logging.config.dictConfig(logconfig_dict(settings.log_level))
    Server(settings).run()
    return 0


def inspect(data_dir: str) -> int:
    if not os.path.isdir(data_dir):
        print(f"process-status inspect: {data_dir} is not a directory", file=sys.stderr)
        return USAGE_ERROR
    warnings: list[str] = []
    store = StatusStore(max_entities=2**63)
    try:
        report = recover(OsFiles(), data_dir, store, repair=False, warn=warnings.append)
    except RecoveryError as exc:
        print(f"DAMAGED: {exc}")
        return 1
    if report.snapshot_created_at is None:
        print("snapshot: none")
    else:
        print(f"snapshot: {report.snapshot_entities} entities, covers journal up to lsn "
              f"{report.snapshot_lsn}, written {report.snapshot_created_at}")
    for name, size, records in report.segments:
        print(f"journal: {name}: {size} bytes, {records} records")
    print(f"replayed: {report.replayed} journal records newer than the snapshot; last lsn "
          f"{report.last_lsn}")
    print(f"entities: {len(store)}")
    for warning in warnings:
        print(f"DAMAGED (repairable at start): {warning}")
    return 1 if warnings else 0


if __name__ == "__main__":
    sys.exit(main())
