"""The `process-status` command: `serve`, `inspect`, `backup`, `salvage` and `restore`."""

from __future__ import annotations

import argparse
import logging.config
import os
import sys
from collections.abc import Sequence

from service import __version__, config
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
    parser.add_argument("--version", action="version", version=f"process-status {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the HTTP service under gunicorn",
                                description="Run the HTTP service under gunicorn: one worker "
                                "with the local backend, --workers replicas of the store with "
                                "Redis.")
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
    inspect.add_argument("--backup", metavar="FILE",
                         help="check a backup file (from `backup` or `salvage`) instead")
    add_backup_commands(commands, data_dir)
    return parser


def add_backup_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], data_dir: config.Option
) -> None:
    """`backup`, `salvage` and `restore` (see service/storage/backup.py)."""
    default = os.environ.get(data_dir.env, config.DEFAULTS.data_dir)
    backup = commands.add_parser(
        "backup", help="copy a data dir into one backup file, also while serve runs",
        description="Write a consistent copy of a data dir (read-only, no lock taken, safe "
                    "while serve runs) as one snapshot-format file.")
    salvage = commands.add_parser(
        "salvage", help="back up what is readable before the first damage in a data dir",
        description="Like backup, for a data dir serve refuses to start from: keep every "
                    "record before the first damage and say exactly what was skipped.")
    for command in (backup, salvage):
        command.add_argument(data_dir.flag, default=default,
                             help=f"the data dir to read [env {data_dir.env}]")
        command.add_argument("--out", metavar="FILE", required=True,
                             help="the backup file to write (outside the data dir)")
    restore = commands.add_parser(
        "restore", help="install a backup file as the state of a stopped data dir",
        description="Verify a backup file and install it as the snapshot of a data dir "
                    "that no service is running on.")
    restore.add_argument("file", metavar="FILE", help="a file written by backup or salvage")
    restore.add_argument(data_dir.flag, default=default,
                         help=f"the data dir to fill [env {data_dir.env}]")
    restore.add_argument("--force", action="store_true",
                         help="restore into a non-empty data dir, moving its contents into "
                              "replaced-<time>/ inside it")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "inspect":
        if args.backup is not None:
            return inspect_backup(args.backup)
        return inspect(args.data_dir)
    if args.command in ("backup", "salvage", "restore"):
        return run_backup_command(args)
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
        hint = ": to check a backup file, use --backup FILE" if os.path.isfile(data_dir) else ""
        print(f"process-status inspect: {data_dir} is not a directory{hint}", file=sys.stderr)
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


def inspect_backup(path: str) -> int:
    from service.storage import backup

    try:
        loaded, size = backup.verify(path)
    except backup.UsageError as exc:
        print(f"process-status inspect: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except backup.BackupError as exc:
        print(f"DAMAGED: {exc}")
        return 1
    print(f"backup: {len(loaded.entries)} entities, lsn {loaded.lsn}, written "
          f"{loaded.created_at}, {size} bytes")
    return 0


def run_backup_command(args: argparse.Namespace) -> int:
    from service.storage import backup

    name = f"process-status {args.command}"
    try:
        if args.command == "restore":
            restored = backup.restore(args.file, args.data_dir, force=args.force)
            print(f"restored: {restored.entities} entities, lsn {restored.lsn} (backup written "
                  f"{restored.created_at}) -> {restored.target}")
            if restored.moved_to is not None:
                print(f"moved aside: the old contents are in {restored.moved_to}")
            return 0
        write = backup.salvage if args.command == "salvage" else backup.backup
        written = write(args.data_dir, args.out)
    except backup.UsageError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except backup.DamagedBackup as exc:
        print(f"{name}: refused, DAMAGED: {exc}", file=sys.stderr)
        return 1
    except (backup.BackupError, OSError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.command}: {written.entities} entities, lsn {written.lsn}, {written.size} "
          f"bytes -> {written.out} (snapshot at lsn {written.snapshot_lsn} + "
          f"{written.replayed} journal records)")
    if args.command == "salvage":
        print(f"damage: {written.damage or 'none, the data dir is intact'}")
        for line in written.lost or ["nothing"]:
            print(f"lost: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
