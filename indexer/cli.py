"""The ``audifi-indexer`` command line (also ``python -m indexer``).

Each command returns a process exit code: 0 success, 1 the work failed, 2 bad input
(configuration, arguments) or a dependency that cannot be reached. Expected failures print one
clear message to stderr; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import psycopg
import sqlalchemy as sa

from indexer import __version__
from indexer.config import Settings, load_settings
from indexer.errors import IndexerError
from indexer.logs import configure_logging

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def load_command_settings(config: str | None, require: tuple[str, ...]) -> Settings:
    """A command's settings, with its log lines (RPC retries, failovers…) sent to stderr in
    the configured format: stdout carries only the command's own output, so ``status --json``
    and ``query … --json`` print exactly one JSON document."""
    settings = load_settings(config, require=require)
    configure_logging(settings.log_format, settings.log_level)
    return settings


def _cmd_migrate(args: argparse.Namespace) -> int:
    from indexer import migrate

    settings = load_command_settings(args.config, require=("database_url",))
    url = settings.database_url
    assert url is not None
    version = migrate.upgrade(url, args.revision)
    if version.current == version.head:
        print(f"schema already at {version.head}; nothing to do")
    else:
        print(f"schema migrated: {version.current or 'empty'} -> {version.head}")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from indexer.daemon import Daemon

    settings = load_command_settings(args.config, require=("database_url", "rpc_urls"))
    daemon = Daemon(settings)
    daemon.install_signal_handlers()
    return daemon.run()


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from indexer.status import collect_status, render_status

    settings = load_command_settings(args.config, require=("database_url",))
    status = collect_status(settings, args.chain_id)
    print(json.dumps(status, sort_keys=True) if args.json else render_status(status))
    return EXIT_OK


def _cmd_rewind(args: argparse.Namespace) -> int:
    from indexer.recovery import rewind
    from indexer.status import pick_chain_id
    from indexer.sync import connect

    settings = load_command_settings(args.config, require=("database_url",))
    assert settings.database_url is not None
    with connect(settings.database_url) as conn:
        chain_id = pick_chain_id(conn, args.chain_id or settings.chain_id)
        if chain_id is None:
            raise IndexerError("nothing to rewind: the indexer has not run on this database")
        result = rewind(conn, chain_id, args.to_block, outbox=settings.redis_url is not None)
    print(
        f"chain {chain_id}: rewound from block {result.previous_block} to {result.to_block}"
        f"{'; halt cleared' if result.halt_cleared else ''}; removed "
        + ", ".join(f"{n} {t.removeprefix('indexer_')}" for t, n in result.removed.items())
        + f". The daemon re-indexes from block {result.to_block + 1}."
    )
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from indexer.demo import run_demo

    return run_demo(config_path=args.config, data_dir=args.data_dir, keep_running=args.keep_running)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audifi-indexer",
        description="AudiFi chain indexer: keeps the AudiFi PostgreSQL database in sync with "
        "the chain.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_config_option(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    migrate = commands.add_parser(
        "migrate", help="upgrade the database schema to the newest revision (idempotent)"
    )
    migrate.add_argument(
        "--revision", default="head", help="target alembic revision (default: head)"
    )
    migrate.set_defaults(handler=_cmd_migrate)

    run = commands.add_parser("run", help="run the indexer daemon (Ctrl-C / SIGTERM stop it)")
    run.set_defaults(handler=_cmd_run)

    status = commands.add_parser("status", help="show sync progress (head, indexed block, lag…)")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument("--chain-id", type=int, help="which chain, when the database has several")
    status.set_defaults(handler=_cmd_status)

    rewind = commands.add_parser(
        "rewind",
        help="operator recovery: delete everything indexed above a block, clear a halt, and "
        "re-index from the next block (see docs/operations.md)",
    )
    rewind.add_argument("--to-block", type=int, required=True, help="keep blocks up to this")
    rewind.add_argument("--chain-id", type=int, help="which chain, when the database has several")
    rewind.set_defaults(handler=_cmd_rewind)

    from indexer.query_cli import add_query_parser

    add_query_parser(commands)

    demo = commands.add_parser(
        "demo",
        help="the indexer on an embedded default: a local anvil chain, a private PostgreSQL "
        "(unless AUDIFI_DATABASE_URL is set), live activity with a reorg, and a report",
    )
    demo.add_argument(
        "--data-dir",
        default=".demo",
        help="where the demo keeps its private PostgreSQL data (default: ./.demo)",
    )
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="keep the chain, database and indexer running for exploring until Ctrl-C",
    )
    demo.set_defaults(handler=_cmd_demo)
    for command in commands.choices.values():
        add_config_option(command, after_command=True)
    return parser


def add_config_option(parser: argparse.ArgumentParser, *, after_command: bool = False) -> None:
    """``--config FILE`` before or after the command: ``audifi-indexer --config F run`` and
    ``audifi-indexer run --config F`` mean the same. After a command the option has no default
    of its own (``SUPPRESS``), so an absent one leaves the value given before the command."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS if after_command else None,
        help="TOML configuration file (default: $AUDIFI_CONFIG); every key can be "
        "overridden by its AUDIFI_* environment variable",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging()  # to stderr until a command has its settings (see load_command_settings)
    try:
        return int(args.handler(args))
    except IndexerError as exc:
        print(f"audifi-indexer {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (sa.exc.OperationalError, psycopg.OperationalError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        print(
            f"audifi-indexer {args.command}: error: the database cannot be reached or refused the "
            f"request: {reason[0] if reason else type(exc).__name__}. Check AUDIFI_DATABASE_URL "
            "and that the server is up.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except (sa.exc.ProgrammingError, psycopg.errors.UndefinedTable) as exc:
        if not isinstance(getattr(exc, "orig", exc), psycopg.errors.UndefinedTable):
            raise
        missing = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(
            f"audifi-indexer {args.command}: error: the database has no indexer schema "
            f"({missing}). Run `audifi-indexer migrate` against AUDIFI_DATABASE_URL first.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"audifi-indexer {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
