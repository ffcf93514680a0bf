"""Typed settings: a flat TOML file plus ``AUDIFI_*`` environment overrides.

Where a value comes from, highest precedence first:

1. the environment variable (``AUDIFI_DATABASE_URL`` …); an empty variable counts as unset;
2. the key in the TOML file (``--config`` path passed by the caller, else ``AUDIFI_CONFIG``);
3. the built-in default.

No file at all is fine: ``run`` works from the environment alone, ``migrate`` needs only
``AUDIFI_DATABASE_URL``. The caller states what it needs with ``require=``; everything else
has a default or is optional.

Every value is validated the same way whichever source it comes from. Only the value that
wins is validated: a TOML value overridden by the environment is not looked at (unknown keys
are always an error, though). A bad value raises :class:`~indexer.errors.ConfigError` whose
message names the place (``file:key`` or the variable), the value (URL passwords shown as
``***``) and what is expected. All problems found in one load are reported together.

``Settings`` built directly (in tests) is not validated; :func:`load_settings` is the checked
way in.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import string
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import parse_qs, urlsplit

from eth_utils.address import is_checksum_address

from indexer.errors import ConfigError

__all__ = [
    "CONFIG_ENV_VAR",
    "ConfigError",
    "Settings",
    "load_settings",
    "mask_url",
]

CONFIG_ENV_VAR = "AUDIFI_CONFIG"
"""Environment variable holding the TOML file path when the caller passes none."""

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]

_LOG_FORMATS: tuple[str, ...] = ("auto", "json", "console")
_LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")
_DB_SCHEMES = ("postgresql", "postgresql+psycopg", "postgres")
_HEX = frozenset(string.hexdigits)


# --------------------------------------------------------------------------------------------
# URL masking


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``; safe to log or print.

    ``postgresql://user:secret@host/db`` → ``postgresql://user:***@host/db``. A ``password=``
    query parameter (libpq style) is masked too. Never raises: text that is not a URL comes
    back unchanged.
    """
    sep = url.find("://")
    if sep < 0:
        return url
    head, rest = url[: sep + 3], url[sep + 3 :]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority = rest[:end]
    at = -1
    if "@" in authority:
        at = authority.rfind("@")
    elif "@" in rest and ":" in authority and not authority.rpartition(":")[2].isdigit():
        # An unescaped '/', '?' or '#' inside the password cut the authority short.
        at = rest.find("@")
    if at >= 0:
        user, colon, password = rest[:at].partition(":")
        if colon and password:
            rest = f"{user}:***{rest[at:]}"
    rest = re.sub(r"([?&]password=)[^&#]*", r"\1***", rest, flags=re.IGNORECASE)
    return head + rest


# --------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    """Validated indexer settings. Addresses are lowercase ``0x`` hex; URLs are as given."""

    database_url: str | None = None
    rpc_urls: tuple[str, ...] = ()
    redis_url: str | None = None
    redis_stream: str = "audifi:events"
    redis_stream_maxlen: int = 1_000_000
    start_block: int = 0
    master_registry: str | None = None
    dividend_contracts: tuple[str, ...] = ()
    coin_factory: str | None = None
    count_spoofed_transfers: bool = True
    """Fetch ``Transfer`` logs from every emitter so that ERC-721-shaped ones from contracts
    no registry registered are counted as ignored (SPEC §2); ``False`` on a public chain
    where every token's transfers would be downloaded only to be counted."""
    confirmations: int = 0
    finality_depth: int = 64
    poll_interval: float = 2.0
    http_host: str = "0.0.0.0"
    http_port: int = 9108
    chain_id: int | None = None
    max_block_range: int = 2000
    rpc_timeout: float = 10.0
    ready_max_lag_blocks: int = 50
    mv_refresh_interval: float = 3600.0
    partitions_ahead_months: int = 3
    log_format: LogFormat = "auto"
    log_level: LogLevel = "info"
    config_path: Path | None = None
    """The TOML file that was read, or ``None`` when settings came from the environment only."""

    @property
    def database_dsn(self) -> str:
        """``database_url`` in the libpq form psycopg accepts (``postgresql://…``)."""
        return "postgresql://" + _db_url_rest(self._need_database_url())

    @property
    def sqlalchemy_url(self) -> str:
        """``database_url`` in the form SQLAlchemy needs for psycopg 3 (``postgresql+psycopg://…``)."""
        return "postgresql+psycopg://" + _db_url_rest(self._need_database_url())

    @property
    def http_enabled(self) -> bool:
        """Whether the metrics/health HTTP server should run (``http_port`` 0 disables it)."""
        return self.http_port != 0

    def describe(self) -> dict[str, Any]:
        """All settings as a JSON-safe dict with URL secrets masked (passwords, API keys in
        the path or query), for ``status`` and logs."""
        from indexer.chain.errors import mask_endpoint  # it builds on mask_url (no cycle here)

        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _URL_FIELDS:
                if isinstance(value, tuple):
                    value = [mask_endpoint(v) for v in value]
                elif value is not None:
                    value = mask_endpoint(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        return out

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.describe().items())
        return f"Settings({inner})"

    def _need_database_url(self) -> str:
        if self.database_url is None:
            raise ConfigError(_missing_message(_SPECS_BY_FIELD["database_url"], self.config_path))
        return self.database_url


_URL_FIELDS = frozenset({"database_url", "rpc_urls", "redis_url"})


def _db_url_rest(url: str) -> str:
    return url.partition("://")[2]


# --------------------------------------------------------------------------------------------
# Sources and error messages


@dataclass(frozen=True, slots=True)
class _Source:
    """Where a raw value came from; ``label`` is what error messages name."""

    from_env: bool
    label: str


def _show(value: object, *, secret_url: bool = False) -> str:
    if isinstance(value, str):
        return repr(mask_url(value) if secret_url else value)
    if isinstance(value, bool):
        return f"{value!r} (boolean)"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def _type_name(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}
    return names.get(type(value), "table" if isinstance(value, dict) else type(value).__name__)


def _invalid(
    src: _Source, problem: str, value: object, expected: str, *, secret_url: bool = False
) -> ConfigError:
    return ConfigError(
        f"{src.label}: {problem} (got {_show(value, secret_url=secret_url)}); expected {expected}"
    )


def _wrong_type(src: _Source, value: object, expected: str) -> ConfigError:
    hint = ""
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d[\d_]*(\.\d+)?\s*", value):
        hint = " (remove the quotes to write a number in TOML)"
    return ConfigError(
        f"{src.label}: wrong type: got {_type_name(value)} {_show(value, secret_url=True)}; "
        f"expected {expected}{hint}"
    )


# --------------------------------------------------------------------------------------------
# Parsers: each takes the raw value (a string from the environment, any TOML value from the
# file) and returns the typed value or raises ConfigError.

T = TypeVar("T")
_Parser = Callable[[object, _Source], T]


def _int_parser(minimum: int, maximum: int | None = None, what: str = "") -> _Parser[int]:
    expected = f"an integer >= {minimum}" if maximum is None else f"an integer {minimum}..{maximum}"
    if what:
        expected += f" ({what})"

    def parse(raw: object, src: _Source) -> int:
        if src.from_env:
            assert isinstance(raw, str)
            try:
                value = int(raw.strip(), 10)
            except ValueError:
                raise _invalid(src, "not an integer", raw, expected) from None
        elif isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        else:
            raise _wrong_type(src, raw, expected)
        if value < minimum or (maximum is not None and value > maximum):
            raise _invalid(src, "out of range", raw if src.from_env else value, expected)
        return value

    return parse


def _positive_float_parser(what: str) -> _Parser[float]:
    expected = f"a number of seconds > 0 ({what})"

    def parse(raw: object, src: _Source) -> float:
        if src.from_env:
            assert isinstance(raw, str)
            try:
                value = float(raw.strip())
            except ValueError:
                raise _invalid(src, "not a number", raw, expected) from None
        elif isinstance(raw, int | float) and not isinstance(raw, bool):
            value = float(raw)
        else:
            raise _wrong_type(src, raw, expected)
        if not math.isfinite(value) or value <= 0:
            raise _invalid(src, "out of range", raw if src.from_env else value, expected)
        return value

    return parse


def _require_str(raw: object, src: _Source, expected: str) -> str:
    if not isinstance(raw, str):
        raise _wrong_type(src, raw, expected)
    return raw.strip()


def _nonempty_str_parser(what: str) -> _Parser[str]:
    expected = f"a non-empty string ({what})"

    def parse(raw: object, src: _Source) -> str:
        value = _require_str(raw, src, expected)
        if not value:
            raise _invalid(src, "empty value", raw, expected)
        return value

    return parse


def _choice_parser(choices: tuple[str, ...]) -> _Parser[Any]:
    expected = "one of " + ", ".join(repr(c) for c in choices)

    def parse(raw: object, src: _Source) -> str:
        value = _require_str(raw, src, expected).lower()
        if value not in choices:
            raise _invalid(src, "unknown value", raw, expected)
        return value

    return parse


_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0"})


def _bool_parser(what: str) -> _Parser[bool]:
    expected = f"true or false ({what})"

    def parse(raw: object, src: _Source) -> bool:
        if not src.from_env:
            if not isinstance(raw, bool):
                raise _wrong_type(src, raw, expected)
            return raw
        assert isinstance(raw, str)
        word = raw.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        raise _invalid(src, "not a boolean", raw, expected + "; also yes/no, on/off, 1/0")

    return parse


def _url_parts(
    text: str, src: _Source, expected: str, schemes: tuple[str, ...]
) -> tuple[str, str, str, str, str]:
    """Split and check scheme/port; return (scheme, netloc, hostname, path, query)."""
    if not text or any(c.isspace() for c in text):
        problem = "empty URL" if not text else "URL contains whitespace"
        raise _invalid(src, problem, text, expected, secret_url=True)
    try:
        parts = urlsplit(text)
        if "," not in parts.netloc:
            _ = parts.port  # raises ValueError on a malformed port
    except ValueError as exc:
        raise _invalid(src, f"unparseable URL ({exc})", text, expected, secret_url=True) from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        problem = f"unsupported URL scheme {scheme + '://' if scheme else '(none)'}"
        raise _invalid(src, problem, text, expected, secret_url=True)
    return scheme, parts.netloc, parts.hostname or "", parts.path, parts.query


def _parse_database_url(raw: object, src: _Source) -> str | None:
    expected = (
        "a PostgreSQL URL like postgresql://user:password@host:5432/dbname "
        "(scheme postgresql://, postgresql+psycopg:// or postgres://)"
    )
    text = _require_str(raw, src, expected)
    if not text and not src.from_env:
        return None
    _, netloc, hostname, path, query = _url_parts(text, src, expected, _DB_SCHEMES)
    params = parse_qs(query)
    host_ok = bool(hostname) or "," in netloc or bool(params.get("host"))
    if not host_ok:
        raise _invalid(src, "URL has no host", text, expected, secret_url=True)
    if not path.lstrip("/") and not params.get("dbname"):
        raise _invalid(src, "URL has no database name", text, expected, secret_url=True)
    return text


def _parse_redis_url(raw: object, src: _Source) -> str | None:
    expected = (
        "a Redis URL like redis://host:6379/0, rediss://… or unix:///path/redis.sock "
        "(empty or unset disables publishing)"
    )
    text = _require_str(raw, src, expected)
    if not text:
        return None
    scheme, _, hostname, path, _ = _url_parts(text, src, expected, ("redis", "rediss", "unix"))
    if scheme == "unix":
        if not path:
            raise _invalid(src, "unix URL has no socket path", text, expected, secret_url=True)
    elif not hostname:
        raise _invalid(src, "URL has no host", text, expected, secret_url=True)
    return text


def _split_items(raw: object, src: _Source, expected: str) -> list[tuple[str, _Source]]:
    """A comma-separated string or a TOML array of strings → stripped items with their labels."""
    if isinstance(raw, str):
        items = [item.strip() for item in raw.split(",")]
        return [(item, src) for item in items if item]
    if isinstance(raw, list) and not src.from_env:
        out: list[tuple[str, _Source]] = []
        for i, item in enumerate(raw):
            item_src = _Source(False, f"{src.label}[{i}]")
            out.append((_require_str(item, item_src, expected), item_src))
        return out
    raise _wrong_type(src, raw, expected)


def _parse_rpc_urls(raw: object, src: _Source) -> tuple[str, ...]:
    expected = (
        "one or more http:// or https:// JSON-RPC URLs "
        "(a TOML string or array, or a comma-separated list)"
    )
    items = _split_items(raw, src, expected)
    if isinstance(raw, str) and not raw.strip() and not src.from_env:
        return ()
    if not items:
        raise _invalid(src, "no URL given", raw, expected, secret_url=True)
    urls: list[str] = []
    for text, item_src in items:
        _, _, hostname, _, _ = _url_parts(text, item_src, expected, ("http", "https"))
        if not hostname:
            raise _invalid(item_src, "URL has no host", text, expected, secret_url=True)
        if text not in urls:
            urls.append(text)
    return tuple(urls)


_ADDRESS_EXPECTED = (
    "a 20-byte address: 0x followed by 40 hex digits, all lowercase, all uppercase "
    "or with a valid EIP-55 checksum"
)


def _address(text: str, src: _Source) -> str:
    expected = _ADDRESS_EXPECTED
    if text[:2] not in ("0x", "0X"):
        raise _invalid(src, "address does not start with 0x", text, expected)
    body = text[2:]
    if len(body) != 40:
        raise _invalid(src, f"address has {len(body)} hex digits, not 40", text, expected)
    bad = next((c for c in body if c not in _HEX), None)
    if bad is not None:
        raise _invalid(src, f"address contains the non-hex character {bad!r}", text, expected)
    if body != body.lower() and body != body.upper() and not is_checksum_address("0x" + body):
        raise ConfigError(
            f"{src.label}: address {text!r} is mixed-case but its EIP-55 checksum is wrong, "
            "so it probably contains a typo; copy the address again from its source "
            "(or write it all lowercase to skip the checksum check)"
        )
    if int(body, 16) == 0:
        raise _invalid(src, "the zero address is not a contract", text, expected)
    return "0x" + body.lower()


def _parse_address(raw: object, src: _Source) -> str | None:
    text = _require_str(raw, src, _ADDRESS_EXPECTED)
    if not text and not src.from_env:
        return None
    return _address(text, src)


def _parse_address_list(raw: object, src: _Source) -> tuple[str, ...]:
    expected = "addresses as a TOML array or a comma-separated string; each " + _ADDRESS_EXPECTED
    items = _split_items(raw, src, expected)
    if not items and src.from_env:
        raise _invalid(src, "no address given", raw, expected)
    out: list[str] = []
    for text, item_src in items:
        address = _address(text, item_src)
        if address not in out:
            out.append(address)
    return tuple(out)


# --------------------------------------------------------------------------------------------
# The table of settings


@dataclass(frozen=True, slots=True)
class _Spec(Generic[T]):
    field: str
    key: str
    env: str
    parse: _Parser[T]
    example: str


_SPECS: tuple[_Spec[Any], ...] = (
    _Spec(
        "database_url",
        "database_url",
        "AUDIFI_DATABASE_URL",
        _parse_database_url,
        "a PostgreSQL URL like postgresql://user:password@host:5432/dbname",
    ),
    _Spec(
        "rpc_urls",
        "rpc_url",
        "AUDIFI_RPC_URL",
        _parse_rpc_urls,
        "one or more http(s):// JSON-RPC URLs (comma-separated in the variable)",
    ),
    _Spec("redis_url", "redis_url", "AUDIFI_REDIS_URL", _parse_redis_url, "a redis:// URL"),
    _Spec(
        "redis_stream",
        "redis_stream",
        "AUDIFI_REDIS_STREAM",
        _nonempty_str_parser("the Redis Stream key"),
        "a stream key",
    ),
    _Spec(
        "redis_stream_maxlen",
        "redis_stream_maxlen",
        "AUDIFI_REDIS_STREAM_MAXLEN",
        _int_parser(1, what="approximate maximum stream length"),
        "an integer >= 1",
    ),
    _Spec(
        "start_block",
        "start_block",
        "AUDIFI_START_BLOCK",
        _int_parser(0, what="first block to index, inclusive"),
        "an integer >= 0",
    ),
    _Spec(
        "master_registry",
        "master_registry",
        "AUDIFI_MASTER_REGISTRY",
        _parse_address,
        "the MasterRegistry contract address",
    ),
    _Spec(
        "dividend_contracts",
        "dividend_contracts",
        "AUDIFI_DIVIDEND_CONTRACTS",
        _parse_address_list,
        "dividend contract address(es), comma-separated in the variable",
    ),
    _Spec(
        "coin_factory",
        "coin_factory",
        "AUDIFI_COIN_FACTORY",
        _parse_address,
        "the artist coin factory address",
    ),
    _Spec(
        "count_spoofed_transfers",
        "count_spoofed_transfers",
        "AUDIFI_COUNT_SPOOFED_TRANSFERS",
        _bool_parser("count Transfer logs of unregistered contracts as ignored"),
        "true or false",
    ),
    _Spec(
        "confirmations",
        "confirmations",
        "AUDIFI_CONFIRMATIONS",
        _int_parser(0, what="blocks to stay behind the head"),
        "an integer >= 0",
    ),
    _Spec(
        "finality_depth",
        "finality_depth",
        "AUDIFI_FINALITY_DEPTH",
        _int_parser(1, what="reorg window in blocks"),
        "an integer >= 1",
    ),
    _Spec(
        "poll_interval",
        "poll_interval",
        "AUDIFI_POLL_INTERVAL",
        _positive_float_parser("time between head polls"),
        "seconds > 0",
    ),
    _Spec(
        "http_host",
        "http_host",
        "AUDIFI_HTTP_HOST",
        _nonempty_str_parser("address the HTTP server listens on"),
        "a host or IP address",
    ),
    _Spec(
        "http_port",
        "http_port",
        "AUDIFI_HTTP_PORT",
        _int_parser(0, 65535, what="port of /metrics, /healthz, /readyz; 0 disables"),
        "an integer 0..65535",
    ),
    _Spec(
        "chain_id",
        "chain_id",
        "AUDIFI_CHAIN_ID",
        _int_parser(1, what="expected chain id of the node"),
        "an integer >= 1",
    ),
    _Spec(
        "max_block_range",
        "max_block_range",
        "AUDIFI_MAX_BLOCK_RANGE",
        _int_parser(1, what="blocks per eth_getLogs call in backfill"),
        "an integer >= 1",
    ),
    _Spec(
        "rpc_timeout",
        "rpc_timeout",
        "AUDIFI_RPC_TIMEOUT",
        _positive_float_parser("timeout of one JSON-RPC request"),
        "seconds > 0",
    ),
    _Spec(
        "ready_max_lag_blocks",
        "ready_max_lag_blocks",
        "AUDIFI_READY_MAX_LAG_BLOCKS",
        _int_parser(0, what="largest lag for which /readyz answers 200"),
        "an integer >= 0",
    ),
    _Spec(
        "mv_refresh_interval",
        "mv_refresh_interval",
        "AUDIFI_MV_REFRESH_INTERVAL",
        _positive_float_parser("time between materialized view refreshes"),
        "seconds > 0",
    ),
    _Spec(
        "partitions_ahead_months",
        "partitions_ahead_months",
        "AUDIFI_PARTITIONS_AHEAD_MONTHS",
        _int_parser(1, what="future monthly partitions to keep"),
        "an integer >= 1",
    ),
    _Spec(
        "log_format",
        "log_format",
        "AUDIFI_LOG_FORMAT",
        _choice_parser(_LOG_FORMATS),
        "auto, json or console",
    ),
    _Spec(
        "log_level",
        "log_level",
        "AUDIFI_LOG_LEVEL",
        _choice_parser(_LOG_LEVELS),
        "debug, info, warning or error",
    ),
)

_SPECS_BY_FIELD = {spec.field: spec for spec in _SPECS}
_SPECS_BY_KEY = {spec.key: spec for spec in _SPECS}


def _missing_message(spec: _Spec[Any], config_path: Path | None) -> str:
    where = (
        f"the config file {config_path}"
        if config_path is not None
        else f"a TOML config file (pass --config or set {CONFIG_ENV_VAR})"
    )
    return (
        f"missing required setting {spec.field}: set the environment variable {spec.env} "
        f"or the key `{spec.key}` in {where}; expected {spec.example}"
    )


# --------------------------------------------------------------------------------------------
# Loading


def _read_toml(path: Path, origin: str) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found (given by {origin}); "
            "expected the path of a readable TOML file"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read config file (given by {origin}): {exc.strerror or exc}"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: config file is not valid UTF-8: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _check_keys(table: Mapping[str, Any], path: Path) -> list[str]:
    valid = sorted(_SPECS_BY_KEY)
    errors: list[str] = []
    for key, value in table.items():
        if key in _SPECS_BY_KEY:
            continue
        if isinstance(value, dict):
            problem = (
                f"{path}: unknown section [{key}]: this file is flat, "
                "put the keys at the top level without a section header"
            )
        else:
            problem = f"{path}:{key}: unknown key {key!r}"
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            if close:
                problem += f"; did you mean {close[0]!r}?"
        errors.append(f"{problem} (valid keys: {', '.join(valid)})")
    return errors


def load_settings(
    config_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    require: Iterable[str] = (),
) -> Settings:
    """Load and validate settings from the TOML file and the environment.

    ``config_path`` is the ``--config`` argument; when ``None``, ``AUDIFI_CONFIG`` is used if
    set, else no file is read. ``env`` defaults to ``os.environ``. ``require`` names
    :class:`Settings` fields that must end up set (e.g. ``("database_url",)`` for ``migrate``,
    ``("database_url", "rpc_urls")`` for ``run``).

    Raises :class:`ConfigError` listing every problem found; ``ValueError`` when ``require``
    names a field that does not exist (a programming error).
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    required = list(require)
    unknown = [name for name in required if name not in _SPECS_BY_FIELD]
    if unknown:
        valid = ", ".join(sorted(_SPECS_BY_FIELD))
        raise ValueError(f"require= names unknown settings {unknown}; valid: {valid}")

    path: Path | None = None
    table: dict[str, Any] = {}
    if config_path is not None and str(config_path).strip():
        path = Path(config_path).expanduser()
        table = _read_toml(path, "--config")
    elif environ.get(CONFIG_ENV_VAR, "").strip():
        path = Path(environ[CONFIG_ENV_VAR].strip()).expanduser()
        table = _read_toml(path, f"the environment variable {CONFIG_ENV_VAR}")

    errors = _check_keys(table, path) if path is not None else []
    values: dict[str, Any] = {}
    for spec in _SPECS:
        raw_env = environ.get(spec.env)
        try:
            if raw_env is not None and raw_env.strip():
                values[spec.field] = spec.parse(
                    raw_env, _Source(True, f"environment variable {spec.env}")
                )
            elif spec.key in table:
                values[spec.field] = spec.parse(
                    table[spec.key], _Source(False, f"{path}:{spec.key}")
                )
        except ConfigError as exc:
            errors.append(str(exc))

    if not errors:
        for name in required:
            if values.get(name) in (None, ()):
                errors.append(_missing_message(_SPECS_BY_FIELD[name], path))

    if len(errors) == 1:
        raise ConfigError(errors[0])
    if errors:
        raise ConfigError(
            f"{len(errors)} configuration problems:\n" + "\n".join(f"  - {e}" for e in errors)
        )
    return Settings(**values, config_path=path)
