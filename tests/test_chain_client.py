"""Chain client: error classification, JSON-RPC over HTTP (batching, failover, retries) and
both chain sources, on a real anvil node (through the fault-injecting proxy) and eth-tester.
"""

from __future__ import annotations

import re
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import orjson
import pytest
from eth_abi.abi import encode
from eth_utils.crypto import keccak
from web3 import Web3
from web3.logs import DISCARD

from indexer.chain.errors import (
    CallRevertedError,
    FatalRpcError,
    InconsistentResponseError,
    RangeTooLargeError,
    RateLimitedError,
    RpcError,
    TransientRpcError,
    classify_rpc_error,
    mask_endpoint,
    parse_retry_after,
)
from indexer.chain.http_source import HttpChainSource, decode_logs, parse_header, parse_log
from indexer.chain.rpc import JsonRpcClient, RpcCall
from indexer.chain.types import BlockHeader, Log, LogFilter
from indexer.chain.web3_source import Web3ChainSource
from indexer.errors import IndexerError
from tests.fixtures.chains import AnvilNode, deploy, deploy_audifi, send_tx

if TYPE_CHECKING:
    from tests.fixtures.rpc_proxy import RpcProxy

pytest_plugins = ["tests.fixtures.rpc_proxy"]

TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
NAME_SELECTOR = "0x" + keccak(text="name()").hex()[:8]
COIN_NAME = "Artist Coin é"
FAST = {"backoff_base": 0.01, "backoff_max": 0.05}


def _closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------------------------
# Expected values, computed with web3 independently of the sources


def _expected_logs(w3: Web3, log_filter: LogFilter) -> list[Log]:
    params: Any = {"fromBlock": log_filter.from_block, "toBlock": log_filter.to_block}
    if log_filter.addresses:
        params["address"] = [Web3.to_checksum_address(a) for a in log_filter.addresses]
    if log_filter.topic0:
        params["topics"] = [list(log_filter.topic0)]
    return [
        Log(
            address=entry["address"].lower(),
            topics=tuple(t.to_0x_hex() for t in entry["topics"]),
            data=entry["data"].to_0x_hex(),
            block_number=entry["blockNumber"],
            block_hash=entry["blockHash"].to_0x_hex(),
            tx_hash=entry["transactionHash"].to_0x_hex(),
            tx_index=entry["transactionIndex"],
            log_index=entry["logIndex"],
        )
        for entry in w3.eth.get_logs(params)
    ]


def _expected_header(w3: Web3, number: int) -> BlockHeader:
    block = w3.eth.get_block(number)
    return BlockHeader(
        number=block["number"],
        hash=block["hash"].to_0x_hex(),
        parent_hash=block["parentHash"].to_0x_hex(),
        timestamp=block["timestamp"],
        logs_bloom=block["logsBloom"].to_0x_hex(),
    )


@dataclass
class Emitted:
    """AudiFi events emitted on a chain, and what a source needs to read them back."""

    filters: list[LogFilter]
    first_block: int
    last_block: int
    coin: str
    coin_block_hash: str
    reverting: str


def _emit_events(w3: Web3) -> Emitted:
    audifi = deploy_audifi(w3)
    first = w3.eth.block_number
    master_id = uuid.uuid4().bytes
    mint = audifi.registry.functions.deployMasterAndMint(
        master_id, "M", "M", list(w3.eth.accounts)[1], 100, 3
    )
    reg = send_tx(w3, mint)
    (reg_log,) = list(audifi.registry.events.MasterRegistered().process_receipt(reg, DISCARD))
    send_tx(w3, audifi.distributor.functions.deposit(master_id), value=12_345)
    dep = send_tx(w3, audifi.factory.functions.deployCoin(uuid.uuid4().bytes, COIN_NAME, "ART", 10))
    (coin_log,) = list(audifi.factory.events.ArtistCoinDeployed().process_receipt(dep, DISCARD))
    coin = audifi.coin(coin_log["args"]["contractAddress"])
    send_tx(w3, coin.functions.transfer(list(w3.eth.accounts)[1], 1))
    weird = deploy(w3, "WeirdCoin", b"x", b"", 7, 3, True)
    last = w3.eth.block_number
    emitters = (audifi.registry, audifi.distributor, audifi.factory)
    shares = reg_log["args"]["contractAddress"]
    return Emitted(
        filters=[
            LogFilter(first, last, tuple(c.address.lower() for c in emitters)),
            LogFilter(first, last, (), (TRANSFER_TOPIC,)),
            LogFilter(first, last, (shares.lower(), coin.address.lower()), (TRANSFER_TOPIC,)),
        ],
        first_block=first,
        last_block=last,
        coin=coin.address.lower(),
        coin_block_hash=w3.eth.get_block(dep["blockNumber"])["hash"].to_0x_hex(),
        reverting=weird.address.lower(),
    )


@pytest.fixture(scope="module")
def emitted(anvil: AnvilNode) -> Emitted:
    return _emit_events(anvil.w3)


@pytest.fixture
def http(anvil: AnvilNode) -> Iterator[HttpChainSource]:
    source = HttpChainSource([anvil.url], timeout=5.0)
    yield source
    source.close()


def _source(urls: list[str], **kw: Any) -> HttpChainSource:
    return HttpChainSource(urls, **{"timeout": 2.0, **FAST, **kw})


# --------------------------------------------------------------------------------------------
# Classification (pure)


@pytest.mark.parametrize(
    ("code", "message", "data", "suggested"),
    [
        (
            -32005,
            "query returned more than 10000 results. Try with this block range [0x1, 0x2].",
            None,
            (1, 2),
        ),
        (
            -32602,
            "Log response size exceeded. this block range should work: [10, 20]",
            None,
            (10, 20),
        ),
        (-32005, "query returned more than 10000 results", {"from": "0xa", "to": "0xb"}, (10, 11)),
        (-32000, "query exceeds max results 20000, retry with the range 5-9", None, (5, 9)),
        (-32000, "block range is too wide", None, None),
        (-32000, "exceed maximum block range: 2000", None, None),
        (-32600, "range limit exceeded", None, None),
        # QuickNode (found by QA: "blocks range" was taken as a fatal -32602)
        (
            -32602,
            "eth_getLogs and eth_newFilter are limited to a 10,000 blocks range",
            None,
            None,
        ),
        (-32602, "eth_getLogs is limited to a 10000 block range", None, None),
        (-32602, "range 1000000 exceeds limit of 10000", None, None),  # Infura, live API
        # Erigon ≥ 3.4 (--rpc.blockrange.limit, --rpc.logs.maxresults)
        (-32602, "query block range exceeds server limit, narrow your filter: 1000", None, None),
        (-32000, "query returns too many logs, narrow your filter: 20000", None, None),
        # a gateway that explains in data (Tenderly)
        (
            -32602,
            "invalid params",
            {"error_id": "4ed9", "payload": "range 9009594 is bigger than range limit 2000"},
            None,
        ),
        (-32000, "block range is larger than max block range, block range = 5120", None, None),
        (-32005, "query returned more than 10000 results. Try [0x9, 0x2]", None, None),
    ],
)
def test_range_too_large_is_recognised_with_its_hint(
    code: int, message: str, data: object, suggested: tuple[int, int] | None
) -> None:
    error = classify_rpc_error(code, message, data, method="eth_getLogs", endpoint="http://n")
    assert type(error) is RangeTooLargeError
    assert error.suggested == suggested


@pytest.mark.parametrize(
    ("code", "message", "data", "cls"),
    [
        (-32005, "limit exceeded", None, RateLimitedError),
        (
            -32000,
            "Your app has exceeded its compute units per second capacity",
            None,
            RateLimitedError,
        ),
        (429, "Too Many Requests", None, RateLimitedError),
        (-32601, "the method eth_foo does not exist/is not available", None, FatalRpcError),
        (-32602, "invalid argument 0: hex string without 0x prefix", None, FatalRpcError),
        (
            -32602,
            "BlockOutOfRangeError: block height is 1 but requested was 5",
            None,
            TransientRpcError,
        ),
        (-32000, "header not found", None, TransientRpcError),
        (-32603, "internal error", None, TransientRpcError),
        (-32000, "unsupported chain id", None, FatalRpcError),
        (3, "execution reverted: nope", "0x08C379A0", CallRevertedError),
        (-32000, "execution reverted", None, CallRevertedError),
        (-32015, "VM execution error.", "0x08c379a0", CallRevertedError),
        (-32000, "the method eth_x does not exist/is not available", None, FatalRpcError),
        (None, "something odd", None, TransientRpcError),
    ],
)
def test_json_rpc_errors_are_classified(
    code: int | None, message: str, data: object, cls: type[RpcError]
) -> None:
    error = classify_rpc_error(code, message, data, method="eth_call", endpoint="http://n")
    assert type(error) is cls
    assert isinstance(error, IndexerError)
    if isinstance(error, CallRevertedError) and data:
        assert error.data == "0x08c379a0"


def test_rate_limit_hints_and_retry_after_header() -> None:
    error = classify_rpc_error(
        -32005, "rate limited, try again in 250ms", None, method="eth_call", endpoint=""
    )
    assert isinstance(error, RateLimitedError) and error.retry_after == 0.25
    error = classify_rpc_error(-32005, "limit", {"backoff_seconds": 2}, method="x", endpoint="")
    assert isinstance(error, RateLimitedError) and error.retry_after == 2.0
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after("soon") is None


def test_inconsistent_response_names_the_rule_and_values() -> None:
    error = InconsistentResponseError(
        "log_block_hash", {"block": 7, "log": "0xaa", "header": "0xbb"}, method="eth_getLogs"
    )
    assert isinstance(error, TransientRpcError)
    assert str(error).startswith("rule log_block_hash broken: block=7, log=0xaa, header=0xbb")
    assert error.rule == "log_block_hash" and error.values["block"] == 7


@pytest.mark.parametrize(
    ("url", "secret", "shown"),
    [
        ("http://user:secret@127.0.0.1:1", "secret", "http://user:***@127.0.0.1:1"),
        (
            "https://mainnet.infura.io/v3/9aa3d95b3bc440fa88ea12eaa4456161",
            "9aa3d95b3bc440fa88ea12eaa4456161",
            "https://mainnet.infura.io/v3/***",
        ),
        (
            "https://rpc.example/eth?apikey=s3cr3t&x=1",
            "s3cr3t",
            "https://rpc.example/eth?apikey=***&x=1",
        ),
        ("http://127.0.0.1:8545", None, "http://127.0.0.1:8545"),
    ],
)
def test_endpoints_are_masked(url: str, secret: str | None, shown: str) -> None:
    assert mask_endpoint(url) == shown
    error = TransientRpcError(f"failed to reach {url}", endpoint=url, method="eth_blockNumber")
    assert error.endpoint == shown
    if secret:
        assert secret not in str(error)


# --------------------------------------------------------------------------------------------
# JsonRpcClient


def test_batch_matches_answers_by_id_and_observes_each_method(anvil: AnvilNode) -> None:
    seen: list[tuple[str, str, str]] = []

    def observe(method: str, endpoint: str, outcome: str, seconds: float) -> None:
        assert seconds >= 0
        seen.append((method, endpoint, outcome))

    client = JsonRpcClient(anvil.url, 5.0, observer=observe)
    head, chain_id, head2 = client.batch(
        [("eth_blockNumber", []), ("eth_chainId", []), ("eth_blockNumber", [])]
    )
    assert int(head, 16) == anvil.w3.eth.block_number == int(head2, 16)
    assert int(chain_id, 16) == anvil.w3.eth.chain_id
    assert seen == [
        ("eth_blockNumber", anvil.url, "ok"),
        ("eth_chainId", anvil.url, "ok"),
    ]
    assert client.batch([]) == []
    client.close()


def test_client_classifies_transport_failures(rpc_proxy: RpcProxy) -> None:
    outcomes: list[str] = []
    client = JsonRpcClient(rpc_proxy.url, 0.3, observer=lambda m, e, o, s: outcomes.append(o))
    rpc_proxy.delay(1.0, n=1)
    with pytest.raises(TransientRpcError) as timeout:
        client.call("eth_blockNumber", [])
    assert timeout.value.outcome == "timeout"
    rpc_proxy.drop_next(1)
    with pytest.raises(TransientRpcError, match="connection") as dropped:
        client.call("eth_blockNumber", [])
    assert dropped.value.outcome == "connection_error"
    rpc_proxy.fail_next(1, status=200, body=b"{not json")
    with pytest.raises(TransientRpcError, match="malformed JSON"):
        client.call("eth_blockNumber", [])
    rpc_proxy.omit_from_batch_next(1)
    with pytest.raises(TransientRpcError, match="misses id"):
        client.batch([("eth_blockNumber", []), ("eth_chainId", [])])
    rpc_proxy.fail_next(1, status=401)
    with pytest.raises(FatalRpcError, match="HTTP 401"):
        client.call("eth_blockNumber", [])
    rpc_proxy.rate_limit_next(1, retry_after=7)
    with pytest.raises(RateLimitedError) as limited:
        client.call("eth_blockNumber", [])
    assert limited.value.retry_after == 7.0
    assert outcomes == [
        "timeout",
        "connection_error",
        "bad_response",
        "ok",  # eth_blockNumber of the batch was answered
        "bad_response",  # eth_chainId was not
        "http_error",
        "rate_limited",
    ]
    assert int(client.call("eth_blockNumber", []), 16) >= 0
    client.close()


def test_error_inside_a_batch_is_classified_per_element(rpc_proxy: RpcProxy) -> None:
    client = JsonRpcClient(rpc_proxy.url, 5.0)
    rpc_proxy.too_many_results(max_blocks=1, hint="good")
    calls: list[RpcCall] = [
        ("eth_blockNumber", []),
        ("eth_getLogs", [{"fromBlock": "0x0", "toBlock": "0x5"}]),
        ("eth_getBlockByNumber", ["0x0", False]),
    ]
    with pytest.raises(RangeTooLargeError) as error:
        client.batch(calls)
    assert error.value.suggested == (0, 0)
    assert error.value.method == "eth_getLogs"
    assert len(rpc_proxy.posts) == 1
    client.close()


_OK_1 = b'{"jsonrpc":"2.0","id":1,"result":"0x1"}'


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "malformed JSON"),
        (b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"bad batch"}}', "bad batch"),
        (b'"x"', "not a list: str"),
        (b"[" + _OK_1 + b"]", "misses id 2"),
        (b"[" + _OK_1 + b',{"jsonrpc":"2.0","id":2}]', "neither result nor error"),
        (b"[" + _OK_1 + b',{"jsonrpc":"2.0","id":[2],"result":"0x2"}]', "misses id 2"),
        (b"[" + _OK_1 + b',{"jsonrpc":"2.0","id":"2","result":"0x2"}]', "misses id 2"),
        (b"[" + _OK_1 + b',{"id":2,"error":{"code":-32005,"message":"slow down"}}]', "slow down"),
        (b"[" + _OK_1 + b',{"id":2,"error":"oops"}]', "malformed error object"),
        (b"[1," + _OK_1 + b',{"id":2,"result":null}]', None),
        (b'[{"id":2,"result":{"a":[1,2]}},' + _OK_1 + b"]", None),
        (b"[" + _OK_1 + b',{"id":2,"error":{"code":-32000,"message":"\xff"}}]', "malformed JSON"),
        (b"[" * 1200 + b"]" * 1200, "malformed JSON"),
    ],
)
def test_batch_raw_answers_and_fails_as_batch(
    rpc_proxy: RpcProxy, body: bytes, expected: str | None
) -> None:
    """batch_raw decodes envelopes with msgspec and leaves results as JSON text: for any
    answer it gives the same results (as text) or raises the same error as batch."""
    calls: list[RpcCall] = [("eth_blockNumber", []), ("eth_chainId", [])]
    outcomes: list[Any] = []
    for raw in (False, True):
        client = JsonRpcClient(rpc_proxy.url, 5.0)  # ids start at 1 for each
        rpc_proxy.fail_next(1, status=200, body=body)
        try:
            results = client.batch_raw(calls) if raw else client.batch(calls)
        except RpcError as exc:
            outcomes.append((type(exc), exc.outcome, str(exc)))
        else:
            outcomes.append([msgspec.json.decode(r) for r in results] if raw else results)
            if raw:
                assert all(isinstance(r, msgspec.Raw) for r in results)
        client.close()
    assert outcomes[0] == outcomes[1]
    if expected is None:
        assert isinstance(outcomes[0], list) and outcomes[0][0] == "0x1"
    else:
        assert expected in outcomes[0][2]


def test_batch_raw_on_anvil_and_after_http_errors(rpc_proxy: RpcProxy, anvil: AnvilNode) -> None:
    client = JsonRpcClient(rpc_proxy.url, 5.0)
    number, block = client.batch_raw(
        [("eth_blockNumber", []), ("eth_getBlockByNumber", ["0x0", False])]
    )
    assert int(msgspec.json.decode(number), 16) == anvil.w3.eth.block_number
    assert msgspec.json.decode(block)["hash"] == anvil.w3.eth.get_block(0)["hash"].to_0x_hex()
    rpc_proxy.fail_next(1, status=503)
    with pytest.raises(TransientRpcError, match="HTTP 503"):
        client.batch_raw([("eth_blockNumber", [])])
    client.close()
    fresh = JsonRpcClient(rpc_proxy.url, 5.0)  # its first id is 1
    rpc_proxy.fail_next(
        1, status=400, body=b'[{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"nope"}}]'
    )
    with pytest.raises(FatalRpcError, match="nope"):
        fresh.batch_raw([("eth_foo", [])])
    fresh.close()


# --------------------------------------------------------------------------------------------
# HttpChainSource and Web3ChainSource on anvil


def test_head_chain_id_and_finalized_on_anvil(anvil: AnvilNode, http: HttpChainSource) -> None:
    anvil.mine(3)
    w3 = anvil.w3
    for source in (http, Web3ChainSource(w3)):
        assert source.chain_id() == w3.eth.chain_id == 31337
        assert source.head() == w3.eth.block_number
        assert source.finalized() == w3.eth.get_block("finalized")["number"]


def test_fetch_equals_web3(anvil: AnvilNode, emitted: Emitted, http: HttpChainSource) -> None:
    w3 = anvil.w3
    numbers = [*range(emitted.first_block, emitted.last_block + 1), 10**9]
    expected_logs = [_expected_logs(w3, f) for f in emitted.filters]
    expected_headers = [_expected_header(w3, n) for n in numbers[:-1]] + [None]
    assert all(expected_logs) and len(expected_logs[0]) >= 3

    for source in (http, Web3ChainSource(w3)):
        logs, headers = source.fetch(emitted.filters, numbers)
        assert logs == expected_logs
        assert headers == expected_headers
        assert source.headers(numbers[-2:]) == expected_headers[-2:]
    assert http.fetch([], []) == ([], [])


def test_fetch_is_one_http_request(rpc_proxy: RpcProxy, emitted: Emitted) -> None:
    source = _source([rpc_proxy.url])
    source.fetch(emitted.filters, [emitted.first_block, emitted.last_block])
    assert rpc_proxy.posts == [["eth_getLogs"] * 3 + ["eth_getBlockByNumber"] * 2]


def test_call_at_block_hash_returns_abi_encoded_name(
    anvil: AnvilNode, emitted: Emitted, http: HttpChainSource
) -> None:
    expected = "0x" + encode(["string"], [COIN_NAME]).hex()
    for source in (http, Web3ChainSource(anvil.w3)):
        assert source.call(emitted.coin, NAME_SELECTOR, emitted.coin_block_hash) == expected


def test_call_that_reverts(anvil: AnvilNode, emitted: Emitted, http: HttpChainSource) -> None:
    block_hash = anvil.w3.eth.get_block("latest")["hash"].to_0x_hex()
    for source in (http, Web3ChainSource(anvil.w3)):
        with pytest.raises(CallRevertedError, match="name reverts") as error:
            source.call(emitted.reverting, NAME_SELECTOR, block_hash)
        assert error.value.data is not None and error.value.data.startswith("0x08c379a0")


# --------------------------------------------------------------------------------------------
# Failover, retries, limits


def test_dead_first_endpoint_fails_over_to_the_second(anvil: AnvilNode) -> None:
    seen: list[tuple[str, str]] = []
    dead = _closed_port_url()
    source = _source([dead, anvil.url], observer=lambda m, e, o, s: seen.append((e, o)))
    assert source.head() == anvil.w3.eth.block_number
    assert seen == [(dead, "connection_error"), (anvil.url, "ok")]
    assert source.chain_id() == 31337  # asks every endpoint once
    assert source.head() == anvil.w3.eth.block_number  # sticky: the dead one is not tried
    assert seen[2:] == [(dead, "connection_error"), (anvil.url, "ok"), (anvil.url, "ok")]


def test_endpoints_on_different_chains_are_refused(
    anvil: AnvilNode, anvil_factory: Callable[..., AnvilNode]
) -> None:
    """Found by QA: the chain came from whichever endpoint answered first, so a database was
    stamped with a wrong endpoint's chain id while it held the other's data."""
    other = anvil_factory(extra_args=["--chain-id", "999"])
    with pytest.raises(FatalRpcError, match=r"serve different chains .*31337.*999|999.*31337"):
        _source([other.url, anvil.url]).chain_id()


def test_expected_chain_leaves_an_endpoint_on_another_chain_out(
    anvil: AnvilNode, anvil_factory: Callable[..., AnvilNode]
) -> None:
    other = anvil_factory(extra_args=["--chain-id", "999"])
    seen: list[tuple[str, str]] = []
    source = _source(
        [other.url, anvil.url],
        expected_chain_id=31337,
        observer=lambda m, e, o, s: seen.append((m, e)),
    )
    assert source.chain_id() == 31337
    assert source.head() == anvil.w3.eth.block_number
    assert source.clone().head() == anvil.w3.eth.block_number
    assert [m for m, e in seen if e == other.url] == ["eth_chainId"]  # never used


def test_endpoint_silent_at_start_is_asked_its_chain_before_use(
    anvil: AnvilNode,
    anvil_factory: Callable[..., AnvilNode],
    rpc_proxy_factory: Callable[..., RpcProxy],
) -> None:
    """An endpoint that did not answer when the chain was pinned is asked which chain it
    serves before its first use; another chain: never used, the request goes on elsewhere."""
    other = anvil_factory(extra_args=["--chain-id", "999"])
    late = rpc_proxy_factory(other.url).fail_next(1, status=503)
    source = _source([late.url, anvil.url])
    assert source.chain_id() == 31337  # `late` failed its eth_chainId
    source._current = 0  # as after a failover back to it
    assert source.head() == anvil.w3.eth.block_number
    assert source.head() == anvil.w3.eth.block_number
    assert late.requests == ["eth_chainId", "eth_chainId"]  # never eth_blockNumber


def test_503_then_success_is_retried(rpc_proxy: RpcProxy, anvil: AnvilNode) -> None:
    rpc_proxy.fail_next(2, status=503)
    assert _source([rpc_proxy.url]).head() == anvil.w3.eth.block_number
    assert rpc_proxy.requests == ["eth_blockNumber"] * 3


def test_attempts_are_bounded(rpc_proxy: RpcProxy) -> None:
    rpc_proxy.fail_next(10, status=502)
    with pytest.raises(TransientRpcError, match="HTTP 502"):
        _source([rpc_proxy.url], max_attempts=3).head()
    assert len(rpc_proxy.requests) == 3


def test_429_retry_after_is_honoured(rpc_proxy: RpcProxy) -> None:
    rpc_proxy.rate_limit_next(1, retry_after=1)
    started = time.monotonic()
    _source([rpc_proxy.url]).head()
    assert time.monotonic() - started >= 1.0
    assert rpc_proxy.requests == ["eth_blockNumber"] * 2


def test_429_switches_endpoint_and_rests_the_limited_one(
    rpc_proxy_factory: Callable[..., RpcProxy],
) -> None:
    limited, other = rpc_proxy_factory(), rpc_proxy_factory()
    limited.rate_limit_next(1, retry_after=30)
    source = _source([limited.url, other.url])
    started = time.monotonic()
    source.head()
    assert time.monotonic() - started < 1.0
    other.fail_next(1, status=503)  # the next endpoint in turn would be `limited`: skipped
    source.head()
    assert limited.requests == ["eth_blockNumber"]
    assert other.requests == ["eth_blockNumber"] * 3


def test_every_endpoint_limited_for_long_raises_rate_limited(rpc_proxy: RpcProxy) -> None:
    rpc_proxy.rate_limit_next(1, retry_after=120)
    started = time.monotonic()
    with pytest.raises(RateLimitedError):
        _source([rpc_proxy.url], max_wait=5).head()
    assert time.monotonic() - started < 1.0


def test_timeout_is_transient_and_retried(rpc_proxy: RpcProxy, anvil: AnvilNode) -> None:
    outcomes: list[str] = []
    rpc_proxy.delay(1.0, n=1)
    source = _source([rpc_proxy.url], timeout=0.3, observer=lambda m, e, o, s: outcomes.append(o))
    assert source.head() == anvil.w3.eth.block_number
    assert outcomes == ["timeout", "ok"]


def test_too_many_results_raises_range_too_large_with_the_hint(
    rpc_proxy: RpcProxy, emitted: Emitted
) -> None:
    source = _source([rpc_proxy.url])
    wide = LogFilter(emitted.first_block, emitted.first_block + 99)
    rpc_proxy.too_many_results(max_blocks=10, hint="good")
    with pytest.raises(RangeTooLargeError) as error:
        source.fetch([wide], [emitted.first_block])
    assert error.value.suggested == (emitted.first_block, emitted.first_block + 9)
    rpc_proxy.too_many_results(max_blocks=10, hint="none")
    with pytest.raises(RangeTooLargeError) as error:
        source.fetch([wide], [])
    assert error.value.suggested is None
    assert len(rpc_proxy.posts) == 2  # never retried
    source.fetch([LogFilter(emitted.first_block, emitted.first_block + 9)], [])


def test_method_not_found_is_fatal_and_not_retried(
    rpc_proxy_factory: Callable[..., RpcProxy],
) -> None:
    first, second = rpc_proxy_factory(), rpc_proxy_factory()
    source = _source([first.url, second.url])
    with pytest.raises(FatalRpcError, match="-32601"):
        source.request("eth_noSuchMethod", [])
    assert first.requests == ["eth_noSuchMethod"]
    assert second.requests == []


def test_unknown_finalized_tag_gives_none(rpc_proxy: RpcProxy) -> None:
    rpc_proxy.error_next(1, -32000, "finalized block not found", method="eth_getBlockByNumber")
    assert _source([rpc_proxy.url]).finalized() is None


def test_credentials_never_leak(anvil: AnvilNode) -> None:
    key = "0123456789abcdef0123456789abcdef"
    url = _closed_port_url().replace("://", "://user:secret@") + f"/v3/{key}?token=tok3n"
    with pytest.raises(TransientRpcError) as error:
        _source([url], max_attempts=1).head()
    shown = "".join(traceback.format_exception(error.value)) + repr(error.value.args)
    for secret in ("secret", key, "tok3n"):
        assert secret not in shown
        assert secret not in error.value.endpoint
    assert "user:***@127.0.0.1" in str(error.value)


# --------------------------------------------------------------------------------------------
# The proxy's own lagging-node and hash faults (used by the fault suite)


def test_proxy_stale_head_and_rewritten_hash(rpc_proxy: RpcProxy, emitted: Emitted) -> None:
    source = _source([rpc_proxy.url])
    stale = emitted.last_block - 2
    rpc_proxy.stale_head(stale)
    assert source.head() == stale
    logs, headers = source.fetch(emitted.filters[:1], [stale, stale + 1])
    assert headers[0] is not None and headers[1] is None
    assert logs[0] and max(log.block_number for log in logs[0]) <= stale
    rpc_proxy.clear().rewrite_log_block_hash(once=True)
    block = logs[0][0].block_number
    logs, headers = source.fetch([LogFilter(block, block)], [block])
    assert headers[0] is not None and {log.block_hash for log in logs[0]} != {headers[0].hash}
    logs, headers = source.fetch([LogFilter(block, block)], [block])
    assert headers[0] is not None and {log.block_hash for log in logs[0]} == {headers[0].hash}


def test_web3_source_maps_node_errors(rpc_proxy: RpcProxy) -> None:
    source = Web3ChainSource(Web3(Web3.HTTPProvider(rpc_proxy.url)))
    rpc_proxy.error_next(1, -32005, "limit exceeded", method="eth_blockNumber")
    with pytest.raises(RateLimitedError):
        source.head()
    rpc_proxy.error_next(1, -32601, "Method not found", method="eth_chainId")
    with pytest.raises(FatalRpcError):
        source.chain_id()
    rpc_proxy.too_many_results(max_blocks=1, hint="good")
    with pytest.raises(RangeTooLargeError) as error:
        source.fetch([LogFilter(0, 5)], [])
    assert error.value.suggested == (0, 0)
    rpc_proxy.clear().error_next(1, -32000, "finalized block not found")
    assert source.finalized() is None


# --------------------------------------------------------------------------------------------
# Web3ChainSource on eth-tester


def test_web3_source_on_eth_tester(eth_tester_w3: Web3) -> None:
    w3 = eth_tester_w3
    events = _emit_events(w3)
    source = Web3ChainSource(w3)
    assert source.chain_id() == w3.eth.chain_id
    assert source.head() == w3.eth.block_number == events.last_block
    assert source.finalized() == source.head()  # eth-tester: finalized = latest
    logs, headers = source.fetch(events.filters, [events.last_block, events.last_block + 1])
    assert logs == [_expected_logs(w3, f) for f in events.filters]
    assert headers == [_expected_header(w3, events.last_block), None]
    expected = "0x" + encode(["string"], [COIN_NAME]).hex()
    assert source.call(events.coin, NAME_SELECTOR, events.coin_block_hash) == expected
    latest = w3.eth.get_block("latest")["hash"].to_0x_hex()
    with pytest.raises(CallRevertedError, match="name reverts"):
        source.call(events.reverting, NAME_SELECTOR, latest)
    with pytest.raises(TransientRpcError, match="not on the canonical chain"):
        source.call(events.coin, NAME_SELECTOR, "0x" + "11" * 32)


@pytest.mark.parametrize("field", ["blockHash", "transactionHash"])
@pytest.mark.parametrize("value", ["", "0x1234", "tab\there", "0x" + "zz" * 32])
def test_log_hashes_must_be_32_byte_hex(field: str, value: str) -> None:
    """A log's block and transaction hashes are stored in NOT NULL columns and compared with
    headers: anything but 32-byte hex is a malformed answer (converted to a transient RPC
    error, retried elsewhere), never a row."""
    raw = {
        "address": "0x" + "ab" * 20,
        "topics": [],
        "data": "0x",
        "blockNumber": "0x1",
        "blockHash": "0x" + "11" * 32,
        "transactionHash": "0x" + "22" * 32,
        "transactionIndex": "0x0",
        "logIndex": "0x0",
    }
    assert parse_log(raw).tx_hash == "0x" + "22" * 32
    with pytest.raises(ValueError, match="not 32-byte hashes"):
        parse_log({**raw, field: value})
    header = {"number": "0x1", "hash": raw["blockHash"], "parentHash": raw["transactionHash"],
              "timestamp": "0x5"}  # fmt: skip
    assert parse_header(header) is not None
    with pytest.raises(ValueError, match="not 32-byte hashes"):
        parse_header({**header, "hash" if field == "blockHash" else "parentHash": value})


def _raw_log(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "address": "0x" + "ab" * 20,
        "topics": ["0x" + "cd" * 32, "0x" + "00" * 12 + "ef" * 20],
        "data": "0x" + "0f" * 32,
        "blockHash": "0x" + "11" * 32,
        "blockNumber": "0x1f",
        "blockTimestamp": "0x6b07a9fe",
        "transactionHash": "0x" + "22" * 32,
        "transactionIndex": "0xa",
        "logIndex": "0x3",
        "removed": False,
    }
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not ...}


def test_decode_logs_builds_lowercase_logs_with_int_quantities() -> None:
    lower = [_raw_log(), _raw_log(logIndex="0x4", removed=None), _raw_log(removed=...)]
    logs = decode_logs(orjson.dumps(lower))
    assert logs[0] == Log(
        address="0x" + "ab" * 20,
        topics=("0x" + "cd" * 32, "0x" + "00" * 12 + "ef" * 20),
        data="0x" + "0f" * 32,
        block_number=31,
        block_hash="0x" + "11" * 32,
        tx_hash="0x" + "22" * 32,
        tx_index=10,
        log_index=3,
    )
    assert [(log.log_index, log.removed) for log in logs] == [(3, False), (4, False), (3, False)]
    assert decode_logs(orjson.dumps([_raw_log(removed=True)]))[0].removed is True
    # a node that answers in upper case (checksummed addresses, "0X", hex digits) gets the same
    upper = [
        {k: (v.upper() if isinstance(v, str) else v) for k, v in raw.items()}
        | {"address": Web3.to_checksum_address(raw["address"])}
        | {"topics": [t.upper() for t in raw["topics"]]}
        for raw in lower
    ]
    assert b"0X" in orjson.dumps(upper)
    assert decode_logs(orjson.dumps(upper)) == logs
    assert decode_logs(msgspec.Raw(orjson.dumps(upper))) == logs
    assert decode_logs(b"[]") == []
    # capitals written as JSON escapes (\u0041 is "A") are found too
    escaped = orjson.dumps(lower).replace(b'"0xabab', b'"0x\\u0041\\u0042ab')
    assert escaped.count(b"\\u0041") == 3
    assert decode_logs(escaped) == logs
    # letters that are no hex digit, and non-ASCII capitals, are lowercased as well
    odd = decode_logs(orjson.dumps([_raw_log(data="0xGG", address="0xÄB" + "ab" * 19)]))[0]
    assert (odd.data, odd.address) == ("0xgg", "0xäb" + "ab" * 19)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"blockNumber": "0xzz"}, "invalid literal"),
        ({"logIndex": ...}, "missing required field `logIndex`"),
        ({"topics": "0x00"}, "Expected `array`"),
        ({"address": None}, "Expected `str`"),
        ({"removed": "no"}, "Expected `bool | null`"),
        ({"transactionHash": "0x1234"}, "not 32-byte hashes"),
        ({"blockHash": "0x" + "g1" * 32}, "not 32-byte hashes"),
        ({"blockNumber": 31}, "Expected `str`, got `int`"),
        ({"logIndex": "-0x1"}, "negative quantity"),
    ],
)
def test_decode_logs_refuses_malformed_logs(
    change: dict[str, Any], message: str, rpc_proxy: RpcProxy
) -> None:
    body = orjson.dumps([_raw_log(), _raw_log(**change)])
    with pytest.raises((ValueError, msgspec.ValidationError), match=re.escape(message)):
        decode_logs(body)
    source = HttpChainSource([rpc_proxy.url], max_attempts=1)  # its first request id is 1
    rpc_proxy.fail_next(1, status=200, body=b'[{"jsonrpc":"2.0","id":1,"result":%s}]' % body)
    with pytest.raises(TransientRpcError, match="malformed answer") as error:
        source.fetch([LogFilter(0, 1)], [])
    assert error.value.outcome == "bad_response"
    source.close()


def test_deeply_nested_log_answer_is_malformed_not_a_crash(rpc_proxy: RpcProxy) -> None:
    """A log with a field nested past the decoders' depth limit is a malformed answer
    (retried elsewhere), not an exception that escapes the source."""
    log = orjson.dumps(_raw_log())[:-1] + b',"extra":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    source = HttpChainSource([rpc_proxy.url], max_attempts=1)  # its first request id is 1
    rpc_proxy.fail_next(1, status=200, body=b'[{"jsonrpc":"2.0","id":1,"result":[%s]}]' % log)
    with pytest.raises(TransientRpcError) as error:
        source.fetch([LogFilter(0, 1)], [])
    assert error.value.outcome == "bad_response"
    source.close()
