"""Bad configuration files and bad command lines: a clear message (what, where, what to do),
a non-zero exit code, no traceback, and nothing stored touched (SPEC §4.6)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon import environ_without_audifi

ROOT = Path(__file__).resolve().parents[1]


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    base = environ_without_audifi()
    return subprocess.run(
        [sys.executable, "-m", "indexer", *args],
        capture_output=True, text=True, env={**base, **(env or {})}, cwd=cwd, timeout=60,
        check=False,
    )  # fmt: skip


def assert_clear(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def test_no_command_and_unknown_command() -> None:
    assert_clear(run(), 2, "required")
    assert_clear(run("frobnicate"), 2, "invalid choice")


def test_run_without_configuration_names_the_variables() -> None:
    assert_clear(run("run"), 2, "AUDIFI_DATABASE_URL", "AUDIFI_RPC_URL")


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert_clear(run("--config", str(missing), "migrate"), 2, str(missing))


def test_malformed_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('database_url = "postgresql://u:topsecret@h/db"\nconfirmations = -1\n'
                   "finality_dept = 3\n[section]\n")  # fmt: skip
    result = run("--config", str(bad), "migrate")
    assert_clear(result, 2, "confirmations", "finality_dept", "finality_depth")
    assert "topsecret" not in result.stderr + result.stdout


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.toml"
    bad.write_text('database_url = "postgresql://h/db"\nstart_block = = 3\n')
    assert_clear(run("--config", str(bad), "migrate"), 2, "broken.toml", "line 2")


def test_bad_address_checksum_is_rejected() -> None:
    env = {
        "AUDIFI_DATABASE_URL": "postgresql://127.0.0.1/x",
        "AUDIFI_RPC_URL": "http://127.0.0.1:1",
        # EIP-55 mixed case with one letter's case flipped
        "AUDIFI_MASTER_REGISTRY": "0x5FbDB2315678afecb367f032d93F642f64180aA3",
    }
    assert_clear(run("run", env=env), 2, "AUDIFI_MASTER_REGISTRY", "checksum")


@pytest.mark.parametrize(
    "args, needle",
    [
        (("rewind",), "--to-block"),
        (("rewind", "--to-block", "x"), "invalid int value"),
        (("status", "--chain-id", "abc"), "invalid int value"),
        (("query", "holders"), "required"),
        (("query", "teleport"), "invalid choice"),
    ],
)
def test_bad_arguments(args: tuple[str, ...], needle: str) -> None:
    assert_clear(run(*args, env={"AUDIFI_DATABASE_URL": "postgresql://127.0.0.1/x"}), 2, needle)


def test_rewind_above_the_cursor_is_refused_and_changes_nothing(database_url: str) -> None:
    from indexer import store
    from indexer.sync import connect

    with connect(database_url) as conn:
        store.init_state(conn, 31337, 0)
        conn.execute("UPDATE indexer_state SET indexed_block = 10, indexed_hash = '0xaa'")
    result = run("rewind", "--to-block", "50", env={"AUDIFI_DATABASE_URL": database_url})
    assert_clear(result, 2, "above the indexed block 10")
    with connect(database_url) as conn:
        state = store.load_state(conn, 31337)
    assert state is not None and (state.indexed_block, state.indexed_hash) == (10, "0xaa")


@pytest.mark.parametrize("before_command", [True, False])
def test_config_option_before_or_after_the_command(tmp_path: Path, before_command: bool) -> None:
    missing = tmp_path / "absent.toml"
    for command in (("migrate",), ("status", "--json"), ("query", "status"), ("run",)):
        option = ("--config", str(missing))
        args = (*option, *command) if before_command else (*command, *option)
        assert_clear(run(*args), 2, str(missing), "config file not found")


def test_commands_on_a_database_without_the_schema_say_migrate(empty_database_url: str) -> None:
    env = {"AUDIFI_DATABASE_URL": empty_database_url}
    commands = (("status", "--json"), ("query", "status", "--json"), ("query", "--json", "status"))
    for args in commands:
        assert_clear(run(*args, env=env), 2, "no indexer schema", "audifi-indexer migrate")


@pytest.mark.anvil
def test_run_against_a_database_that_does_not_exist_stops_clearly(anvil: Any) -> None:
    """A wrong database name is a configuration error, not an outage: no waiting forever."""
    env = {
        "AUDIFI_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/audifi_no_such_database",
        "AUDIFI_RPC_URL": anvil.url,
        "AUDIFI_HTTP_PORT": "0",
    }
    assert_clear(run("run", env=env), 2, "audifi_no_such_database", "does not exist")


def test_run_with_endpoints_on_different_chains_stops_clearly(
    anvil: Any, anvil_factory: Any, database_url: str
) -> None:
    """Found by QA: the daemon took the chain of whichever endpoint answered first and
    stamped the database with it. Endpoints that disagree, with no AUDIFI_CHAIN_ID to say
    which is right: one line naming both chains, exit 2, nothing written."""
    other = anvil_factory(extra_args=["--chain-id", "999"])
    env = {
        "AUDIFI_DATABASE_URL": database_url,
        "AUDIFI_RPC_URL": f"{other.url},{anvil.url}",
        "AUDIFI_HTTP_PORT": "0",
    }
    assert_clear(run("run", env=env), 2, "serve different chains", "999", "31337")


def test_status_and_query_json_stdout_is_one_json_document_when_the_node_fails(
    database_url: str,
) -> None:
    """SPEC §8: ``status --json`` prints one JSON object. The RPC client's retry warnings (a
    dead endpoint) go to stderr in the configured format, never into that document."""
    env = {
        "AUDIFI_DATABASE_URL": database_url,
        "AUDIFI_RPC_URL": "http://127.0.0.1:1",
        "AUDIFI_LOG_FORMAT": "json",
    }
    for args in (("status", "--json"), ("query", "status", "--json")):
        result = run(*args, env=env)
        assert result.returncode == 0, result.stderr
        json.loads(result.stdout)  # one document, nothing else
    result = run("status", "--json", env=env)
    assert "rpc_error" in json.loads(result.stdout)
    warnings = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert warnings and all(w["event"] == "rpc_retry" for w in warnings), result.stderr
