"""Unit tests for indexer.config: TOML + AUDIFI_* environment settings (no database needed)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from indexer.config import CONFIG_ENV_VAR, Settings, load_settings, mask_url
from indexer.errors import ConfigError, IndexerError

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "indexer.example.toml"

# A valid EIP-55 address and variants of it.
CHECKSUMMED = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
LOWER = CHECKSUMMED.lower()
UPPER = "0x" + CHECKSUMMED[2:].upper()
# Same address with the case of one letter flipped: mixed case, wrong checksum.
BAD_CHECKSUM = CHECKSUMMED.replace("F", "f", 1)
OTHER = "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512"

# Every setting with a non-default value: TOML literal, env string, expected parsed value.
ALL_VALUES: dict[str, tuple[str, str, str, object]] = {
    # field: (toml key, toml literal, env var + env string, expected)
    "database_url": (
        "database_url",
        '"postgresql://u@db:5432/a"',
        "postgresql://u@db2:5432/b",
        "postgresql://u@db2:5432/b",
    ),
    "rpc_urls": ("rpc_url", '"http://a:8545"', "http://b:1,https://c", ("http://b:1", "https://c")),
    "redis_url": ("redis_url", '"redis://r1"', "redis://r2:6379/1", "redis://r2:6379/1"),
    "redis_stream": ("redis_stream", '"s1"', "s2", "s2"),
    "redis_stream_maxlen": ("redis_stream_maxlen", "10", "20", 20),
    "start_block": ("start_block", "5", "7", 7),
    "master_registry": ("master_registry", f'"{OTHER}"', CHECKSUMMED, LOWER),
    "dividend_contracts": ("dividend_contracts", f'["{LOWER}"]', f"{OTHER}", (OTHER,)),
    "coin_factory": ("coin_factory", f'"{LOWER}"', OTHER, OTHER),
    "count_spoofed_transfers": ("count_spoofed_transfers", "false", "Off", False),
    "confirmations": ("confirmations", "1", "3", 3),
    "finality_depth": ("finality_depth", "10", "12", 12),
    "poll_interval": ("poll_interval", "0.5", "1.5", 1.5),
    "http_host": ("http_host", '"127.0.0.1"', "::1", "::1"),
    "http_port": ("http_port", "9000", "0", 0),
    "chain_id": ("chain_id", "1", "31337", 31337),
    "max_block_range": ("max_block_range", "100", "500", 500),
    "rpc_timeout": ("rpc_timeout", "3", "4.5", 4.5),
    "ready_max_lag_blocks": ("ready_max_lag_blocks", "5", "0", 0),
    "mv_refresh_interval": ("mv_refresh_interval", "60", "120", 120.0),
    "partitions_ahead_months": ("partitions_ahead_months", "2", "6", 6),
    "log_format": ("log_format", '"json"', "CONSOLE", "console"),
    "log_level": ("log_level", '"debug"', "Warning", "warning"),
}

ENV_NAMES = {
    "database_url": "AUDIFI_DATABASE_URL",
    "rpc_urls": "AUDIFI_RPC_URL",
    "redis_url": "AUDIFI_REDIS_URL",
    "redis_stream": "AUDIFI_REDIS_STREAM",
    "redis_stream_maxlen": "AUDIFI_REDIS_STREAM_MAXLEN",
    "start_block": "AUDIFI_START_BLOCK",
    "master_registry": "AUDIFI_MASTER_REGISTRY",
    "dividend_contracts": "AUDIFI_DIVIDEND_CONTRACTS",
    "coin_factory": "AUDIFI_COIN_FACTORY",
    "count_spoofed_transfers": "AUDIFI_COUNT_SPOOFED_TRANSFERS",
    "confirmations": "AUDIFI_CONFIRMATIONS",
    "finality_depth": "AUDIFI_FINALITY_DEPTH",
    "poll_interval": "AUDIFI_POLL_INTERVAL",
    "http_host": "AUDIFI_HTTP_HOST",
    "http_port": "AUDIFI_HTTP_PORT",
    "chain_id": "AUDIFI_CHAIN_ID",
    "max_block_range": "AUDIFI_MAX_BLOCK_RANGE",
    "rpc_timeout": "AUDIFI_RPC_TIMEOUT",
    "ready_max_lag_blocks": "AUDIFI_READY_MAX_LAG_BLOCKS",
    "mv_refresh_interval": "AUDIFI_MV_REFRESH_INTERVAL",
    "partitions_ahead_months": "AUDIFI_PARTITIONS_AHEAD_MONTHS",
    "log_format": "AUDIFI_LOG_FORMAT",
    "log_level": "AUDIFI_LOG_LEVEL",
}


def write(tmp_path: Path, text: str, name: str = "indexer.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_toml(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    return load_settings(write(tmp_path, text), env={} if env is None else env)


def config_error(tmp_path: Path | None, text: str | None, env: dict[str, str]) -> str:
    path = write(tmp_path, text) if tmp_path is not None and text is not None else None
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=env)
    return str(info.value)


# --------------------------------------------------------------------------------------------
# Defaults and sources


def test_defaults_without_file_or_env() -> None:
    s = load_settings(env={})
    assert s == Settings()
    assert s.database_url is None
    assert s.rpc_urls == ()
    assert s.redis_url is None
    assert s.redis_stream == "audifi:events"
    assert s.redis_stream_maxlen == 1_000_000
    assert s.start_block == 0
    assert s.master_registry is None and s.coin_factory is None
    assert s.dividend_contracts == ()
    assert s.count_spoofed_transfers is True
    assert s.confirmations == 0
    assert s.finality_depth == 64
    assert s.poll_interval == 2.0
    assert s.http_host == "0.0.0.0"
    assert s.http_port == 9108 and s.http_enabled
    assert s.chain_id is None
    assert s.max_block_range == 2000
    assert s.rpc_timeout == 10.0
    assert s.ready_max_lag_blocks == 50
    assert s.mv_refresh_interval == 3600.0
    assert s.partitions_ahead_months == 3
    assert s.log_format == "auto"
    assert s.log_level == "info"
    assert s.config_path is None


def test_field_tables_cover_every_setting() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)} - {"config_path"}
    assert set(ALL_VALUES) == fields
    assert set(ENV_NAMES) == fields


def test_spec_env_names_are_the_fixed_ones() -> None:
    # The spec fixes these names; other services rely on them.
    env = {ENV_NAMES[name]: value[2] for name, value in ALL_VALUES.items()}
    s = load_settings(env=env)
    for name, (_, _, _, expected) in ALL_VALUES.items():
        assert getattr(s, name) == expected, name


def test_toml_load_every_key(tmp_path: Path) -> None:
    text = "\n".join(f"{key} = {literal}" for key, literal, _, _ in ALL_VALUES.values())
    s = load_toml(tmp_path, text)
    assert s.config_path == tmp_path / "indexer.toml"
    assert s.database_url == "postgresql://u@db:5432/a"
    assert s.rpc_urls == ("http://a:8545",)
    assert s.redis_url == "redis://r1"
    assert s.redis_stream == "s1"
    assert s.redis_stream_maxlen == 10
    assert s.start_block == 5
    assert s.master_registry == OTHER
    assert s.dividend_contracts == (LOWER,)
    assert s.coin_factory == LOWER
    assert s.count_spoofed_transfers is False
    assert s.confirmations == 1
    assert s.finality_depth == 10
    assert s.poll_interval == 0.5
    assert s.http_host == "127.0.0.1"
    assert s.http_port == 9000
    assert s.chain_id == 1
    assert s.max_block_range == 100
    assert s.rpc_timeout == 3.0 and isinstance(s.rpc_timeout, float)
    assert s.ready_max_lag_blocks == 5
    assert s.mv_refresh_interval == 60.0
    assert s.partitions_ahead_months == 2
    assert s.log_format == "json"
    assert s.log_level == "debug"


@pytest.mark.parametrize("field", sorted(ALL_VALUES))
def test_env_overrides_toml(tmp_path: Path, field: str) -> None:
    key, literal, env_value, expected = ALL_VALUES[field]
    s = load_toml(tmp_path, f"{key} = {literal}\n", env={ENV_NAMES[field]: env_value})
    assert getattr(s, field) == expected


@pytest.mark.parametrize("field", sorted(ALL_VALUES))
def test_empty_env_counts_as_unset(tmp_path: Path, field: str) -> None:
    key, literal, _, _ = ALL_VALUES[field]
    from_file = load_toml(tmp_path, f"{key} = {literal}\n")
    for blank in ("", "   "):
        s = load_toml(tmp_path, f"{key} = {literal}\n", env={ENV_NAMES[field]: blank})
        assert getattr(s, field) == getattr(from_file, field)
    assert getattr(load_settings(env={ENV_NAMES[field]: ""}), field) == getattr(Settings(), field)


def test_env_override_skips_invalid_toml_value(tmp_path: Path) -> None:
    # Only the winning value is validated.
    s = load_toml(tmp_path, "finality_depth = 0\n", env={"AUDIFI_FINALITY_DEPTH": "5"})
    assert s.finality_depth == 5


def test_config_path_from_env_var(tmp_path: Path) -> None:
    path = write(tmp_path, "start_block = 42\n")
    s = load_settings(env={CONFIG_ENV_VAR: str(path)})
    assert s.start_block == 42
    assert s.config_path == path


def test_explicit_config_path_beats_env_var(tmp_path: Path) -> None:
    a = write(tmp_path, "start_block = 1\n", "a.toml")
    b = write(tmp_path, "start_block = 2\n", "b.toml")
    assert load_settings(str(a), env={CONFIG_ENV_VAR: str(b)}).start_block == 1


def test_empty_config_env_var_means_no_file() -> None:
    assert load_settings(env={CONFIG_ENV_VAR: ""}).config_path is None


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIFI_START_BLOCK", "99")
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    assert load_settings().start_block == 99


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="config file not found") as info:
        load_settings(missing, env={})
    assert str(missing) in str(info.value) and "--config" in str(info.value)
    with pytest.raises(ConfigError, match=CONFIG_ENV_VAR):
        load_settings(env={CONFIG_ENV_VAR: str(missing)})


def test_unreadable_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        load_settings(tmp_path, env={})
    assert str(tmp_path) in str(info.value)


def test_invalid_toml_reports_path_and_line(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "start_block = 1\nfinality_depth = = 2\n", {})
    assert str(tmp_path / "indexer.toml") in msg
    assert "invalid TOML" in msg
    assert "line 2" in msg


def test_non_utf8_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'http_host = "\xff"\n')
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_settings(path, env={})


# --------------------------------------------------------------------------------------------
# Keys and types


def test_unknown_key_suggests_closest_and_lists_valid(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "finality_dept = 3\n", {})
    assert "finality_dept" in msg
    assert "did you mean 'finality_depth'" in msg
    assert "valid keys:" in msg and "poll_interval" in msg and "rpc_url" in msg
    assert str(tmp_path / "indexer.toml") in msg


def test_unknown_key_without_close_match(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "zzzz = 1\n", {})
    assert "unknown key 'zzzz'" in msg and "did you mean" not in msg


def test_rpc_urls_key_suggests_rpc_url(tmp_path: Path) -> None:
    msg = config_error(tmp_path, 'rpc_urls = ["http://a"]\n', {})
    assert "did you mean 'rpc_url'" in msg


def test_section_rejected_file_is_flat(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "[indexer]\nstart_block = 1\n", {})
    assert "unknown section [indexer]" in msg and "top level" in msg


def test_string_for_int_names_key_value_and_type(tmp_path: Path) -> None:
    msg = config_error(tmp_path, 'start_block = "100"\n', {})
    assert f"{tmp_path / 'indexer.toml'}:start_block" in msg
    assert "'100'" in msg
    assert "string" in msg and "integer" in msg
    assert "remove the quotes" in msg


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("finality_depth = true", "finality_depth"),
        ("poll_interval = false", "poll_interval"),
        ("confirmations = 1.5", "confirmations"),
        ('poll_interval = "fast"', "poll_interval"),
        ("http_host = 1", "http_host"),
        ("log_level = 1", "log_level"),
        ("database_url = 5", "database_url"),
        ("rpc_url = 1", "rpc_url"),
        ("rpc_url = [1]", "rpc_url[0]"),
        ("dividend_contracts = 5", "dividend_contracts"),
        (f'dividend_contracts = ["{LOWER}", 5]', "dividend_contracts[1]"),
        ("master_registry = 1", "master_registry"),
        ("finality_depth = { a = 1 }", "finality_depth"),
        ('count_spoofed_transfers = "yes"', "count_spoofed_transfers"),
        ("count_spoofed_transfers = 1", "count_spoofed_transfers"),
    ],
)
def test_wrong_toml_types(tmp_path: Path, line: str, key: str) -> None:
    msg = config_error(tmp_path, line + "\n", {})
    assert f"indexer.toml:{key}" in msg
    assert "wrong type" in msg and "expected" in msg


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("AUDIFI_START_BLOCK", "abc", "not an integer"),
        ("AUDIFI_START_BLOCK", "1.5", "not an integer"),
        ("AUDIFI_START_BLOCK", "-1", "out of range"),
        ("AUDIFI_CONFIRMATIONS", "-1", "out of range"),
        ("AUDIFI_FINALITY_DEPTH", "0", "out of range"),
        ("AUDIFI_FINALITY_DEPTH", "x", "not an integer"),
        ("AUDIFI_POLL_INTERVAL", "0", "out of range"),
        ("AUDIFI_POLL_INTERVAL", "-2", "out of range"),
        ("AUDIFI_POLL_INTERVAL", "nan", "out of range"),
        ("AUDIFI_POLL_INTERVAL", "inf", "out of range"),
        ("AUDIFI_POLL_INTERVAL", "soon", "not a number"),
        ("AUDIFI_HTTP_PORT", "65536", "out of range"),
        ("AUDIFI_HTTP_PORT", "-1", "out of range"),
        ("AUDIFI_CHAIN_ID", "0", "out of range"),
        ("AUDIFI_MAX_BLOCK_RANGE", "0", "out of range"),
        ("AUDIFI_RPC_TIMEOUT", "0", "out of range"),
        ("AUDIFI_READY_MAX_LAG_BLOCKS", "-5", "out of range"),
        ("AUDIFI_MV_REFRESH_INTERVAL", "0", "out of range"),
        ("AUDIFI_PARTITIONS_AHEAD_MONTHS", "0", "out of range"),
        ("AUDIFI_REDIS_STREAM_MAXLEN", "0", "out of range"),
        ("AUDIFI_LOG_FORMAT", "xml", "unknown value"),
        ("AUDIFI_LOG_LEVEL", "verbose", "unknown value"),
        ("AUDIFI_COUNT_SPOOFED_TRANSFERS", "maybe", "not a boolean"),
    ],
)
def test_bad_env_values_name_the_variable(var: str, value: str, fragment: str) -> None:
    msg = config_error(None, None, {var: value})
    assert msg.startswith(f"environment variable {var}:")
    assert fragment in msg
    assert repr(value) in msg
    assert "expected" in msg


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("start_block = -1", "integer >= 0"),
        ("confirmations = -1", "integer >= 0"),
        ("finality_depth = 0", "integer >= 1"),
        ("finality_depth = -3", "integer >= 1"),
        ("poll_interval = 0", "> 0"),
        ("poll_interval = -0.5", "> 0"),
        ("http_port = 70000", "0..65535"),
        ('log_format = "xml"', "'auto', 'json', 'console'"),
        ('log_level = "trace"', "'debug', 'info', 'warning', 'error'"),
        ('redis_stream = ""', "non-empty"),
        ('http_host = "  "', "non-empty"),
    ],
)
def test_bad_toml_values(tmp_path: Path, line: str, fragment: str) -> None:
    msg = config_error(tmp_path, line + "\n", {})
    key = line.split(" =")[0]
    assert f"indexer.toml:{key}" in msg
    assert fragment in msg


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), (" YES ", True), ("on", True), ("1", True),
     ("false", False), ("No", False), ("off", False), ("0", False)],
)  # fmt: skip
def test_booleans_from_the_environment(value: str, expected: bool) -> None:
    s = load_settings(env={"AUDIFI_COUNT_SPOOFED_TRANSFERS": value})
    assert s.count_spoofed_transfers is expected


def test_integers_accept_underscores_and_whitespace() -> None:
    s = load_settings(env={"AUDIFI_START_BLOCK": " 1_000 ", "AUDIFI_POLL_INTERVAL": " 3 "})
    assert s.start_block == 1000
    assert s.poll_interval == 3.0


def test_all_errors_reported_together(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "finality_depth = 0\nbogus = 1\n", {"AUDIFI_CONFIRMATIONS": "-1"})
    assert msg.startswith("3 configuration problems:")
    assert "finality_depth" in msg and "bogus" in msg and "AUDIFI_CONFIRMATIONS" in msg


# --------------------------------------------------------------------------------------------
# URLs


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://user:pw@localhost:5432/audifi",
        "postgresql+psycopg://user@db.internal/audifi",
        "postgres://user@127.0.0.1/audifi",
        "postgresql://u@[::1]:5432/audifi",
        "postgresql://u@h1:5432,h2:5433/audifi",
        "postgresql:///audifi?host=/var/run/postgresql",
    ],
)
def test_database_url_accepted(url: str) -> None:
    assert load_settings(env={"AUDIFI_DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("mysql://user:hunter2@host/db", "unsupported URL scheme mysql://"),
        ("localhost:5432/audifi", "unsupported URL scheme"),
        ("just-a-word", "unsupported URL scheme (none)"),
        ("postgresql:///audifi", "no host"),
        ("postgresql://user:hunter2@host", "no database name"),
        ("postgresql://user:hunter2@host/", "no database name"),
        ("postgresql://user:hunter2@host:port/db", "unparseable URL"),
        ("postgresql://user:hunter2@[::1/db", "unparseable URL"),
        ("postgresql://user:hunter2@host/db name", "whitespace"),
    ],
)
def test_database_url_rejected_with_password_masked(url: str, fragment: str) -> None:
    msg = config_error(None, None, {"AUDIFI_DATABASE_URL": url})
    assert "AUDIFI_DATABASE_URL" in msg
    assert fragment in msg
    assert "hunter2" not in msg
    if "hunter2" in url:
        assert "***" in msg
    assert "postgresql://" in msg  # what is expected


def test_database_url_error_in_toml_masks_password(tmp_path: Path) -> None:
    msg = config_error(tmp_path, 'database_url = "mysql://me:s3cret@h/db"\n', {})
    assert "indexer.toml:database_url" in msg
    assert "s3cret" not in msg and "mysql://me:***@h/db" in msg


def test_database_url_forms() -> None:
    for url in (
        "postgres://u:p@h/db",
        "postgresql://u:p@h/db",
        "postgresql+psycopg://u:p@h/db",
    ):
        s = Settings(database_url=url)
        assert s.database_dsn == "postgresql://u:p@h/db"
        assert s.sqlalchemy_url == "postgresql+psycopg://u:p@h/db"
    with pytest.raises(ConfigError, match="AUDIFI_DATABASE_URL"):
        _ = Settings().database_dsn


def test_rpc_urls_comma_list_and_array(tmp_path: Path) -> None:
    env = {"AUDIFI_RPC_URL": " http://a:8545 , https://b.example/rpc,, http://a:8545 "}
    assert load_settings(env=env).rpc_urls == ("http://a:8545", "https://b.example/rpc")
    s = load_toml(tmp_path, 'rpc_url = ["http://a", "https://b"]\n')
    assert s.rpc_urls == ("http://a", "https://b")
    assert load_toml(tmp_path, 'rpc_url = "http://a,http://b"\n').rpc_urls == (
        "http://a",
        "http://b",
    )
    assert load_toml(tmp_path, 'rpc_url = ""\n').rpc_urls == ()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("ws://node:8546", "unsupported URL scheme ws://"),
        ("node:8545", "unsupported URL scheme"),
        ("http://", "no host"),
        ("http://a, ftp://b", "unsupported URL scheme ftp://"),
        (",", "no URL given"),
        ("https://user:apikey@node:notaport", "unparseable URL"),
    ],
)
def test_rpc_urls_rejected(value: str, fragment: str) -> None:
    msg = config_error(None, None, {"AUDIFI_RPC_URL": value})
    assert "AUDIFI_RPC_URL" in msg and fragment in msg
    assert "apikey" not in msg


def test_rpc_url_empty_array_rejected(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "rpc_url = []\n", {})
    assert "indexer.toml:rpc_url" in msg and "no URL given" in msg


def test_rpc_url_array_item_error_names_index(tmp_path: Path) -> None:
    msg = config_error(tmp_path, 'rpc_url = ["http://a", "tcp://b"]\n', {})
    assert "indexer.toml:rpc_url[1]" in msg


@pytest.mark.parametrize(
    "url", ["redis://localhost:6379/0", "rediss://:pw@cache.example:6380", "unix:///run/r.sock"]
)
def test_redis_url_accepted(url: str) -> None:
    assert load_settings(env={"AUDIFI_REDIS_URL": url}).redis_url == url


def test_redis_url_empty_means_no_publishing(tmp_path: Path) -> None:
    assert load_toml(tmp_path, 'redis_url = ""\n').redis_url is None
    assert load_settings(env={"AUDIFI_REDIS_URL": ""}).redis_url is None


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://:pw@cache:6379", "unsupported URL scheme http://"),
        ("redis://", "no host"),
        ("unix://", "no socket path"),
    ],
)
def test_redis_url_rejected(url: str, fragment: str) -> None:
    msg = config_error(None, None, {"AUDIFI_REDIS_URL": url})
    assert "AUDIFI_REDIS_URL" in msg and fragment in msg and ":pw@" not in msg


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://user:secret@host/db", "postgresql://user:***@host/db"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("postgresql://host/db", "postgresql://host/db"),
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("https://key:se@cr:et@node.example/v1", "https://key:***@node.example/v1"),
        ("postgresql://u:pa/ss@host/db", "postgresql://u:***@host/db"),
        ("postgresql://u:@host/db", "postgresql://u:@host/db"),
        ("postgresql://u@h/db?password=secret&sslmode=require", None),
        ("http://node:8545/path@x", "http://node:8545/path@x"),
        ("not a url", "not a url"),
        ("", ""),
        ("http://[::1", "http://[::1"),
    ],
)
def test_mask_url(url: str, masked: str | None) -> None:
    out = mask_url(url)
    assert "secret" not in out
    if masked is not None:
        assert out == masked
    else:
        assert out == "postgresql://u@h/db?password=***&sslmode=require"


def test_describe_masks_rpc_api_keys_and_passwords() -> None:
    """What logs and repr show of the settings: no password, no API key in a path or query."""
    key = "0123456789abcdef0123456789abcdef"
    settings = Settings(
        database_url="postgresql://u:secret@h/db",
        rpc_urls=(f"https://rpc.example/v3/{key}", f"http://u:secret@node:8545/?apikey={key}"),
    )
    shown = settings.describe()
    text = repr(settings)
    for out in (str(shown), text):
        assert "secret" not in out and key not in out, out
    assert shown["rpc_urls"][0] == "https://rpc.example/v3/***"


# --------------------------------------------------------------------------------------------
# Addresses


@pytest.mark.parametrize("address", [LOWER, UPPER, CHECKSUMMED, "0X" + LOWER[2:]])
def test_address_any_case_normalised(address: str) -> None:
    env = {
        "AUDIFI_MASTER_REGISTRY": address,
        "AUDIFI_COIN_FACTORY": address,
        "AUDIFI_DIVIDEND_CONTRACTS": address,
    }
    s = load_settings(env=env)
    assert s.master_registry == LOWER
    assert s.coin_factory == LOWER
    assert s.dividend_contracts == (LOWER,)


@pytest.mark.parametrize(
    "var", ["AUDIFI_MASTER_REGISTRY", "AUDIFI_COIN_FACTORY", "AUDIFI_DIVIDEND_CONTRACTS"]
)
def test_mixed_case_bad_checksum_rejected(var: str) -> None:
    assert BAD_CHECKSUM != CHECKSUMMED and BAD_CHECKSUM.lower() == LOWER
    msg = config_error(None, None, {var: BAD_CHECKSUM})
    assert var in msg
    assert BAD_CHECKSUM in msg
    assert "EIP-55 checksum" in msg and "lowercase" in msg


def test_bad_checksum_in_toml_list_names_index(tmp_path: Path) -> None:
    msg = config_error(tmp_path, f'dividend_contracts = ["{OTHER}", "{BAD_CHECKSUM}"]\n', {})
    assert "indexer.toml:dividend_contracts[1]" in msg and "checksum" in msg


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (LOWER[2:], "does not start with 0x"),
        (LOWER[:-1], "39 hex digits"),
        (LOWER + "00", "42 hex digits"),
        ("0x" + "g" * 40, "non-hex character 'g'"),
        ("0x" + "0" * 40, "zero address"),
        ("0x", "0 hex digits"),
    ],
)
def test_bad_address_rejected(value: str, fragment: str) -> None:
    msg = config_error(None, None, {"AUDIFI_MASTER_REGISTRY": value})
    assert msg.startswith("environment variable AUDIFI_MASTER_REGISTRY:")
    assert fragment in msg and repr(value) in msg and "40 hex digits" in msg


def test_dividend_contracts_comma_list_deduplicated(tmp_path: Path) -> None:
    env = {"AUDIFI_DIVIDEND_CONTRACTS": f"{CHECKSUMMED}, {OTHER},{LOWER},"}
    assert load_settings(env=env).dividend_contracts == (LOWER, OTHER)
    s = load_toml(tmp_path, f'dividend_contracts = "{OTHER},{UPPER}"\n')
    assert s.dividend_contracts == (OTHER, LOWER)
    assert load_toml(tmp_path, "dividend_contracts = []\n").dividend_contracts == ()
    msg = config_error(None, None, {"AUDIFI_DIVIDEND_CONTRACTS": " , "})
    assert "no address given" in msg


def test_empty_address_in_toml_means_unset(tmp_path: Path) -> None:
    assert load_toml(tmp_path, 'master_registry = ""\n').master_registry is None


# --------------------------------------------------------------------------------------------
# require=


def test_migrate_needs_only_database_url() -> None:
    s = load_settings(env={"AUDIFI_DATABASE_URL": "postgresql://u@h/db"}, require=["database_url"])
    assert s.database_url == "postgresql://u@h/db"


def test_run_needs_no_file_when_env_is_set() -> None:
    env = {"AUDIFI_DATABASE_URL": "postgresql://u@h/db", "AUDIFI_RPC_URL": "http://n:8545"}
    s = load_settings(env=env, require=("database_url", "rpc_urls"))
    assert s.rpc_urls == ("http://n:8545",) and s.config_path is None


def test_missing_required_names_key_and_env_var() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, require=("database_url",))
    msg = str(info.value)
    assert "missing required setting database_url" in msg
    assert "AUDIFI_DATABASE_URL" in msg and "`database_url`" in msg
    assert "--config" in msg and CONFIG_ENV_VAR in msg


def test_missing_required_lists_all_and_names_file(tmp_path: Path) -> None:
    path = write(tmp_path, "start_block = 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={}, require=("database_url", "rpc_urls"))
    msg = str(info.value)
    assert msg.startswith("2 configuration problems")
    assert "AUDIFI_RPC_URL" in msg and "`rpc_url`" in msg
    assert "AUDIFI_DATABASE_URL" in msg and "`database_url`" in msg
    assert str(path) in msg


def test_required_empty_list_counts_as_missing(tmp_path: Path) -> None:
    path = write(tmp_path, "dividend_contracts = []\n")
    with pytest.raises(ConfigError, match="AUDIFI_DIVIDEND_CONTRACTS"):
        load_settings(path, env={}, require=["dividend_contracts"])


def test_require_unknown_name_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="rpc_url"):
        load_settings(env={}, require=["rpc_url"])


# --------------------------------------------------------------------------------------------
# Settings object


def test_describe_is_json_safe_and_masks_secrets(tmp_path: Path) -> None:
    path = write(tmp_path, f'dividend_contracts = ["{OTHER}"]\n')
    env = {
        "AUDIFI_DATABASE_URL": "postgresql://u:dbpass@h/db",
        "AUDIFI_RPC_URL": "https://u:rpcpass@node,http://n2",
        "AUDIFI_REDIS_URL": "redis://:redispass@r:6379/0",
    }
    s = load_settings(path, env=env)
    d = s.describe()
    text = json.dumps(d)
    assert not re.search("dbpass|rpcpass|redispass", text)
    assert d["database_url"] == "postgresql://u:***@h/db"
    assert d["rpc_urls"] == ["https://u:***@node", "http://n2"]
    assert d["redis_url"] == "redis://:***@r:6379/0"
    assert d["dividend_contracts"] == [OTHER]
    assert d["config_path"] == str(path)
    assert set(d) == {f.name for f in dataclasses.fields(Settings)}
    assert "dbpass" not in repr(s) and "***" in repr(s)
    # The real values are still there for the code that connects.
    assert s.database_url == "postgresql://u:dbpass@h/db"


def test_settings_frozen() -> None:
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.start_block = 5  # type: ignore[misc]


def test_http_port_zero_disables() -> None:
    assert not load_settings(env={"AUDIFI_HTTP_PORT": "0"}).http_enabled


def test_error_hierarchy() -> None:
    assert issubclass(ConfigError, IndexerError)
    assert issubclass(IndexerError, Exception)


# --------------------------------------------------------------------------------------------
# The example file


def test_example_file_loads() -> None:
    s = load_settings(EXAMPLE, env={}, require=("database_url", "rpc_urls"))
    assert s.config_path == EXAMPLE
    assert s.rpc_urls
    # The example shows the defaults for everything else.
    defaults = dataclasses.asdict(Settings())
    for name, value in dataclasses.asdict(s).items():
        if name not in {"database_url", "rpc_urls", "config_path"}:
            assert value == defaults[name], name


def test_example_file_commented_values_load_too(tmp_path: Path) -> None:
    # Optional keys are commented out with example values; those values must be valid too.
    text = EXAMPLE.read_text(encoding="utf-8")
    uncommented = re.sub(r"(?m)^# ([a-z_]+ = )", r"\1", text)
    assert uncommented != text
    s = load_toml(tmp_path, uncommented)
    assert s.chain_id is not None and s.redis_url is not None
    assert s.master_registry and s.coin_factory and s.dividend_contracts


def test_example_file_documents_every_key_and_env_var() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for field, (key, _, _, _) in ALL_VALUES.items():
        assert re.search(rf"(?m)^(# )?{key} = ", text), key
        assert ENV_NAMES[field] in text, ENV_NAMES[field]
    assert CONFIG_ENV_VAR in text
