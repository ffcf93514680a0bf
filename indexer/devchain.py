"""A local development chain: anvil (from the project's npm packages) and the AudiFi
reference contracts deployed from ``contracts/build``. Used by the demo, the benchmark and the
tests (which re-export these helpers from ``tests/fixtures/chains.py``).

Guarantees: :func:`start_anvil` listens on 127.0.0.1 only, on a free port, with a private
state cache directory; :meth:`AnvilNode.stop` stops it by PID (SIGTERM, then SIGKILL) and
removes that directory; nodes still running at interpreter exit are stopped.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_typing import ChecksumAddress
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.types import RPCEndpoint, TxReceipt

from indexer.contracts import REPO_ROOT, load_artifact
from indexer.localpg import free_port

ANVIL_BIN_ENV = "AUDIFI_ANVIL_BIN"
DEFAULT_ANVIL_BIN = (
    REPO_ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
)
ANVIL_HARDFORK = "prague"
DEFAULT_MAX_PERSISTED_STATES = 5000
RECEIPT_TIMEOUT = 30.0


def anvil_binary() -> Path:
    """Path of the anvil binary (``$AUDIFI_ANVIL_BIN`` or the npm package's binary)."""
    override = os.environ.get(ANVIL_BIN_ENV)
    return Path(override) if override else DEFAULT_ANVIL_BIN


@dataclass
class AnvilNode:
    """A running anvil process. ``stop()`` is idempotent."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    w3: Web3
    accounts: list[ChecksumAddress]
    cache_dir: Path
    log_path: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def rpc(self, method: str, params: Sequence[Any] = ()) -> Any:
        """Raw JSON-RPC call (anvil_mine, evm_snapshot, anvil_reorg, ...); raises on error."""
        response = self.w3.provider.make_request(RPCEndpoint(method), list(params))
        if response.get("error"):
            raise RuntimeError(f"anvil {method} failed: {response['error']}")
        return response.get("result")

    def mine(self, blocks: int = 1) -> None:
        self.rpc("anvil_mine", [hex(blocks)])

    def stop(self, timeout: float = 5.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        _NODES_BY_ID.pop(id(self), None)
        if self.process.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.cache_dir, ignore_errors=True)


_NODES_BY_ID: dict[int, AnvilNode] = {}


@atexit.register
def _stop_leftover_nodes() -> None:  # safety net if a test run is interrupted
    for node in list(_NODES_BY_ID.values()):
        with contextlib.suppress(Exception):
            node.stop(timeout=2.0)


def start_anvil(
    *,
    extra_args: Sequence[str] = (),
    max_persisted_states: int = DEFAULT_MAX_PERSISTED_STATES,
    timeout: float = 20.0,
    attempts: int = 3,
) -> AnvilNode:
    """Start anvil on a free loopback port and wait until ``eth_chainId`` answers."""
    binary = anvil_binary()
    if not binary.is_file():
        raise RuntimeError(
            f"anvil binary not found at {binary}; run `npm ci` in {REPO_ROOT} "
            f"(or set {ANVIL_BIN_ENV})"
        )
    last_error = ""
    for _ in range(attempts):
        node, last_error = _try_start(binary, extra_args, max_persisted_states, timeout)
        if node is not None:
            return node
    raise RuntimeError(
        f"anvil ({binary}) did not answer eth_chainId: {last_error}. "
        f"Is the binary intact? Try `npm ci` in {REPO_ROOT}."
    )


def _try_start(
    binary: Path, extra_args: Sequence[str], max_persisted_states: int, timeout: float
) -> tuple[AnvilNode | None, str]:
    port = free_port()
    cache_dir = Path(tempfile.mkdtemp(prefix="audifi-anvil-"))
    log_path = cache_dir / "anvil.log"
    cmd = [
        str(binary),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--hardfork", ANVIL_HARDFORK,
        "--silent",
        "--max-persisted-states", str(max_persisted_states),
        "--cache-path", str(cache_dir / "states"),
        *extra_args,
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30}))
    deadline = time.monotonic() + timeout
    error = "timeout"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log_path.read_text(errors="replace").strip()[-2000:]
            error = f"exited with code {process.returncode}: {output or '(no output)'}"
            break
        try:
            w3.eth.chain_id  # noqa: B018 - readiness probe
        except Exception:
            time.sleep(0.05)
            continue
        node = AnvilNode(
            url=url,
            port=port,
            process=process,
            w3=w3,
            accounts=list(w3.eth.accounts),
            cache_dir=cache_dir,
            log_path=log_path,
        )
        _NODES_BY_ID[id(node)] = node
        return node, ""
    else:
        error = f"no answer within {timeout:.0f}s (cmd: {' '.join(cmd)})"
    if process.poll() is None:
        process.kill()
        process.wait()
    shutil.rmtree(cache_dir, ignore_errors=True)
    return None, error


# --------------------------------------------------------------------------------------------
# Deployment helpers


def contract_at(w3: Web3, name: str, address: str) -> Contract:
    """Web3 contract object for ``name`` (ABI from contracts/build) at ``address``."""
    abi = load_artifact(name)["abi"]
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=abi)


def wait_receipt(w3: Web3, tx_hash: HexBytes, what: str) -> TxReceipt:
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT)
    if receipt["status"] != 1:
        raise AssertionError(f"{what} reverted (tx {tx_hash.to_0x_hex()})")
    return receipt


def deploy_with_receipt(
    w3: Web3, name: str, *args: Any, sender: str | None = None, value: int = 0
) -> tuple[Contract, TxReceipt]:
    """Deploy ``name`` from contracts/build; return (contract, receipt)."""
    artifact = load_artifact(name)
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    tx: dict[str, Any] = {"from": sender or w3.eth.accounts[0]}
    if value:
        tx["value"] = value
    tx_hash = factory.constructor(*args).transact(tx)
    receipt = wait_receipt(w3, tx_hash, f"deploy {name}")
    address = receipt["contractAddress"]
    assert address is not None
    return w3.eth.contract(address=address, abi=artifact["abi"]), receipt


def deploy(w3: Web3, name: str, *args: Any, sender: str | None = None, value: int = 0) -> Contract:
    """Deploy ``name`` from contracts/build with constructor ``args``; wait for the receipt."""
    return deploy_with_receipt(w3, name, *args, sender=sender, value=value)[0]


def send_tx(w3: Web3, fn: ContractFunction, sender: str | None = None, value: int = 0) -> TxReceipt:
    """Transact a bound contract call (``c.functions.f(...)``), wait, assert success."""
    tx: dict[str, Any] = {"from": sender or w3.eth.accounts[0]}
    if value:
        tx["value"] = value
    tx_hash = fn.transact(tx)  # type: ignore[arg-type]
    return wait_receipt(w3, tx_hash, fn.fn_name)


@dataclass
class AudifiContracts:
    """The three configured AudiFi contracts, deployed by ``owner``."""

    w3: Web3
    owner: ChecksumAddress
    registry: Contract
    distributor: Contract
    factory: Contract

    def shares(self, address: str) -> Contract:
        return contract_at(self.w3, "MasterShares", address)

    def coin(self, address: str) -> Contract:
        return contract_at(self.w3, "ArtistCoin", address)


def deploy_audifi(w3: Web3, owner: str | None = None) -> AudifiContracts:
    """Deploy MasterRegistry, DividendDistributor and ArtistCoinFactory (owner = ``owner``)."""
    owner_addr = Web3.to_checksum_address(owner or w3.eth.accounts[0])
    return AudifiContracts(
        w3=w3,
        owner=owner_addr,
        registry=deploy(w3, "MasterRegistry", owner_addr, sender=owner_addr),
        distributor=deploy(w3, "DividendDistributor", owner_addr, sender=owner_addr),
        factory=deploy(w3, "ArtistCoinFactory", sender=owner_addr),
    )


# --------------------------------------------------------------------------------------------
# Fixtures
