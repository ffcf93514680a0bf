"""Smoke test of the reference contracts on both local chains (anvil and eth-tester).

Every SPEC section 2 event is emitted, read back with ``eth_getLogs`` and decoded with the ABI.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.utils import get_create_address

from tests.fixtures.chains import (
    ANVIL_BIN_ENV,
    AnvilNode,
    AudifiContracts,
    Chain,
    deploy,
    deploy_audifi,
    mine_in_one_block,
    send_tx,
    start_anvil,
)

ZERO = "0x0000000000000000000000000000000000000000"
TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
UINT256_MAX = 2**256 - 1


def _logs(w3: Web3, contract: Contract, block: int, to_block: int | None = None) -> list[Any]:
    return list(
        w3.eth.get_logs(
            {
                "fromBlock": block,
                "toBlock": block if to_block is None else to_block,
                "address": contract.address,
            }
        )
    )


@pytest.fixture
def audifi(chain: Chain) -> AudifiContracts:
    return deploy_audifi(chain.w3)


def test_master_registered_and_share_transfers(chain: Chain, audifi: AudifiContracts) -> None:
    w3 = chain.w3
    owner, alice, bob = chain.accounts[:3]
    master_id = uuid.uuid4().bytes

    receipt = send_tx(w3, audifi.registry.functions.deployMaster(master_id, "Master One", "M1"))
    logs = _logs(w3, audifi.registry, receipt["blockNumber"])
    assert len(logs) == 1
    event = audifi.registry.events.MasterRegistered().process_log(logs[0])
    assert event["event"] == "MasterRegistered"
    assert event["args"]["masterId"] == master_id
    shares_address = event["args"]["contractAddress"]
    assert audifi.registry.functions.masters(master_id).call() == shares_address
    assert logs[0]["topics"][1].to_0x_hex() == "0x" + master_id.hex() + "00" * 16

    shares = audifi.shares(shares_address)
    assert shares.functions.owner().call() == owner  # deployMaster caller owns the shares
    first = send_tx(w3, shares.functions.mint(alice, 1))
    send_tx(w3, shares.functions.transferFrom(alice, bob, 1), sender=alice)
    send_tx(w3, shares.functions.batchMint(alice, 10, 2))
    last = send_tx(w3, shares.functions.burn(1), sender=bob)  # holder burns

    logs = _logs(w3, shares, first["blockNumber"], last["blockNumber"])
    logs = [log for log in logs if log["topics"][0].to_0x_hex() == TRANSFER_TOPIC]
    assert [len(log["topics"]) for log in logs] == [4] * 5
    decoded = [shares.events.Transfer().process_log(log)["args"] for log in logs]
    assert [(a["from"], a["to"], a["tokenId"]) for a in decoded] == [
        (ZERO, alice, 1),
        (alice, bob, 1),
        (ZERO, alice, 10),
        (ZERO, alice, 11),
        (bob, ZERO, 1),
    ]
    assert shares.functions.balanceOf(alice).call() == 2


def test_registration_and_transfers_in_one_tx(chain: Chain, audifi: AudifiContracts) -> None:
    w3 = chain.w3
    owner, alice = chain.accounts[:2]
    master_id = uuid.uuid4().bytes
    fn = audifi.registry.functions.deployMasterAndMint(master_id, "M", "M", alice, 100, 3)
    receipt = send_tx(w3, fn)
    (reg_log,) = _logs(w3, audifi.registry, receipt["blockNumber"])
    shares = audifi.shares(
        audifi.registry.events.MasterRegistered().process_log(reg_log)["args"]["contractAddress"]
    )
    transfers = [
        log
        for log in _logs(w3, shares, receipt["blockNumber"])
        if log["topics"][0].to_0x_hex() == TRANSFER_TOPIC
    ]
    assert [shares.events.Transfer().process_log(log)["args"]["tokenId"] for log in transfers] == [
        100,
        101,
        102,
    ]
    assert all(log["logIndex"] > reg_log["logIndex"] for log in transfers)
    assert {log["transactionHash"] for log in transfers} == {reg_log["transactionHash"]}
    assert shares.functions.owner().call() == owner


def test_registration_and_transfers_in_one_block(chain: Chain, audifi: AudifiContracts) -> None:
    w3 = chain.w3
    alice = chain.accounts[1]
    master_id = uuid.uuid4().bytes
    # The shares contract is the registry's next CREATE: predict it so the mint can be queued.
    shares = audifi.shares(
        get_create_address(
            audifi.registry.address, w3.eth.get_transaction_count(audifi.registry.address)
        )
    )
    reg, mint = mine_in_one_block(
        w3,
        [
            audifi.registry.functions.deployMaster(master_id, "M", "M"),
            shares.functions.mint(alice, 7),
        ],
    )
    assert reg["blockNumber"] == mint["blockNumber"]
    assert reg["transactionIndex"] < mint["transactionIndex"]
    (reg_log,) = _logs(w3, audifi.registry, reg["blockNumber"])
    args = audifi.registry.events.MasterRegistered().process_log(reg_log)["args"]
    assert args["contractAddress"] == shares.address
    (transfer,) = _logs(w3, shares, mint["blockNumber"])[-1:]
    assert shares.events.Transfer().process_log(transfer)["args"]["to"] == alice
    position = (transfer["transactionIndex"], transfer["logIndex"])
    assert position > (reg_log["transactionIndex"], reg_log["logIndex"])


def test_log_index_scope(chain: Chain) -> None:
    """anvil numbers logIndex across the block (as JSON-RPC specifies); eth-tester restarts it
    at 0 in every transaction. Order logs by (transactionIndex, logIndex) to be safe."""
    w3 = chain.w3
    forger = deploy(w3, "EventForger")
    a, b = chain.accounts[:2]
    many = forger.functions.emitMany([[b"\x02" * 32], [b"\x03" * 32]], [b"", b""])
    first, _ = mine_in_one_block(
        w3, [(forger.functions.emitRaw([b"\x01" * 32], b""), a), (many, b)]
    )
    logs = _logs(w3, forger, first["blockNumber"])
    positions = [(log["transactionIndex"], log["logIndex"]) for log in logs]
    assert [log["topics"][0][:1] for log in logs] == [b"\x01", b"\x02", b"\x03"]
    if chain.name == "anvil":
        assert positions == [(0, 0), (1, 1), (1, 2)]
    else:
        assert positions == [(0, 0), (1, 0), (1, 1)]


def test_registered_external_shares_contract(chain: Chain, audifi: AudifiContracts) -> None:
    w3 = chain.w3
    shares = deploy(w3, "MasterShares", "Ext", "EXT", chain.accounts[0])
    master_id = uuid.uuid4().bytes
    receipt = send_tx(w3, audifi.registry.functions.registerMaster(master_id, shares.address))
    (log,) = _logs(w3, audifi.registry, receipt["blockNumber"])
    args = audifi.registry.events.MasterRegistered().process_log(log)["args"]
    assert (args["masterId"], args["contractAddress"]) == (master_id, shares.address)


def test_dividend_deposited(chain: Chain, audifi: AudifiContracts) -> None:
    w3 = chain.w3
    master_id = uuid.uuid4().bytes
    first = send_tx(w3, audifi.distributor.functions.deposit(master_id), value=12_345)
    last = send_tx(w3, audifi.distributor.functions.record(master_id, UINT256_MAX))
    assert w3.eth.get_balance(audifi.distributor.address) == 12_345

    logs = _logs(w3, audifi.distributor, first["blockNumber"], last["blockNumber"])
    assert [len(log["topics"]) for log in logs] == [2, 2]
    decoded = [audifi.distributor.events.DividendDeposited().process_log(log) for log in logs]
    assert [(e["args"]["masterId"], e["args"]["amount"]) for e in decoded] == [
        (master_id, 12_345),
        (master_id, UINT256_MAX),
    ]


def test_artist_coin_deployed(chain: Chain, audifi: AudifiContracts) -> None:
    w3 = chain.w3
    artist_id = uuid.uuid4().bytes
    supply = 1_000_000 * 10**18
    receipt = send_tx(
        w3, audifi.factory.functions.deployCoin(artist_id, "Artist Coin é", "ART", supply)
    )
    block = receipt["blockNumber"]
    (log,) = _logs(w3, audifi.factory, block)
    args = audifi.factory.events.ArtistCoinDeployed().process_log(log)["args"]
    assert args["artistId"] == artist_id

    coin = audifi.coin(args["contractAddress"])
    send_tx(w3, coin.functions.transfer(chain.accounts[1], 5))  # state moves on after `block`
    assert coin.functions.name().call(block_identifier=block) == "Artist Coin é"
    assert coin.functions.symbol().call(block_identifier=block) == "ART"
    assert coin.functions.totalSupply().call(block_identifier=block) == supply
    assert coin.functions.decimals().call(block_identifier=block) == 18
    assert coin.functions.balanceOf(chain.accounts[0]).call(block_identifier=block) == supply
    assert coin.functions.balanceOf(chain.accounts[1]).call(block_identifier=block) == 0
    with pytest.raises(Exception):  # noqa: B017 - no code before the deploy block
        coin.functions.name().call(block_identifier=block - 1)


def test_event_forger_and_weird_coin(chain: Chain) -> None:
    w3 = chain.w3
    forger = deploy(w3, "EventForger")
    topics = [bytes.fromhex(TRANSFER_TOPIC[2:]), b"\x01" * 32, b"\x02" * 32]
    receipt = send_tx(w3, forger.functions.emitRaw(topics, b"\xff" * 5))
    (log,) = _logs(w3, forger, receipt["blockNumber"])
    assert [t.to_0x_hex() for t in log["topics"]] == ["0x" + t.hex() for t in topics]
    assert bytes(log["data"]) == b"\xff" * 5

    raw_name = b"\x00\xff\xfe"  # not ABI-encoded, not UTF-8
    weird = deploy(w3, "WeirdCoin", raw_name, b"", 7, 3, False)
    result = w3.eth.call({"to": weird.address, "data": weird.encode_abi("name")})
    assert bytes(result) == raw_name
    assert weird.functions.totalSupply().call() == 7
    assert weird.functions.decimals().call() == 3
    send_tx(w3, weird.functions.setReverts(True, False))
    with pytest.raises(Exception, match="name reverts"):
        weird.functions.name().call()


@pytest.mark.anvil
def test_anvil_factory_private_node(anvil: AnvilNode, anvil_factory: Any) -> None:
    node: AnvilNode = anvil_factory()
    assert node.url != anvil.url and node.pid != anvil.pid
    assert node.w3.eth.block_number == 0
    assert node.w3.eth.chain_id == 31337
    assert len(node.accounts) == 10 and node.w3.eth.get_balance(node.accounts[0]) > 10**21
    node.mine(3)
    assert node.w3.eth.block_number == 3
    node.stop()
    assert node.process.poll() is not None
    assert not node.cache_dir.exists()
    node.stop()  # idempotent


def test_missing_anvil_binary_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv(ANVIL_BIN_ENV, str(tmp_path / "nope" / "anvil"))
    with pytest.raises(RuntimeError, match=r"nope/anvil.*npm ci"):
        start_anvil()
