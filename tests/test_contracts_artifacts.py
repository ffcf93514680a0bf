"""The compiled contract artifacts and abis/ are present, fresh and match SPEC section 2."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from eth_utils.crypto import keccak

from indexer.contracts import (
    PRODUCTION_CONTRACTS,
    REPO_ROOT,
    abi_dir,
    artifact_dir,
    compute_source_hash,
    load_abi,
    load_artifact,
    source_files,
)

RECOMPILE = "run `node scripts/compile_contracts.mjs` and commit contracts/build/ and abis/"

# SPEC section 2: contract -> (exact Solidity event signature, topic0 literal).
SPEC_EVENTS: dict[str, tuple[str, str]] = {
    "MasterRegistry": (
        "MasterRegistered(bytes16 indexed masterId, address indexed contractAddress)",
        "0x9195a9ff4ab386c04aa9691a5f658e3872127e9f40cf1c9acb44572555878625",
    ),
    "MasterShares": (
        "Transfer(address indexed from, address indexed to, uint256 indexed tokenId)",
        "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef",
    ),
    "DividendDistributor": (
        "DividendDeposited(bytes16 indexed masterId, uint256 amount)",
        "0x5c5401593622c8abaabfa830273118895aa3a4f4aa25b3860e02a647230c4328",
    ),
    "ArtistCoinFactory": (
        "ArtistCoinDeployed(bytes16 indexed artistId, address indexed contractAddress)",
        "0xb473377bddbbb9e6020c9d77f31d7289949a356bd25adac6549f075a7ea6fca9",
    ),
}

_CONTRACT_RE = re.compile(r"^\s*(?:abstract\s+)?contract\s+(\w+)", re.MULTILINE)
_PARAM_RE = re.compile(r"^(\w+)( indexed)? (\w+)$")


def _declared_contracts() -> list[str]:
    names: list[str] = []
    for path in source_files().values():
        names += _CONTRACT_RE.findall(path.read_text(encoding="utf-8"))
    return sorted(names)


def _parse_spec_signature(signature: str) -> tuple[str, list[tuple[str, bool, str]]]:
    name, _, rest = signature.partition("(")
    params = []
    for raw in rest.rstrip(")").split(", "):
        m = _PARAM_RE.match(raw)
        assert m, raw
        params.append((m[1], m[2] is not None, m[3]))
    return name, params


def _event(abi: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [e for e in abi if e.get("type") == "event" and e.get("name") == name]
    assert len(found) == 1, f"expected one event {name} in ABI, got {len(found)}"
    return found[0]


def test_sources_exist() -> None:
    rels = set(source_files())
    for name in PRODUCTION_CONTRACTS:
        assert f"{name}.sol" in rels
    assert {"test/EventForger.sol", "test/WeirdCoin.sol"} <= rels


@pytest.mark.parametrize("name", _declared_contracts())
def test_artifact_fresh(name: str) -> None:
    path = artifact_dir() / f"{name}.json"
    assert path.is_file(), f"missing artifact {path}: {RECOMPILE}"
    artifact = load_artifact(name)
    assert set(artifact) == {"contractName", "abi", "bytecode", "deployedBytecode", "sourceHash"}
    assert artifact["contractName"] == name
    assert artifact["sourceHash"] == compute_source_hash(), f"stale artifact {path}: {RECOMPILE}"
    for key in ("bytecode", "deployedBytecode"):
        assert re.fullmatch(r"0x(?:[0-9a-f]{2})+", artifact[key]), f"{name}.{key} is not hex"


def test_no_orphan_artifacts() -> None:
    on_disk = sorted(p.stem for p in artifact_dir().glob("*.json"))
    assert on_disk == _declared_contracts(), f"orphan or missing artifacts: {RECOMPILE}"


def test_abis_match_artifacts() -> None:
    assert sorted(p.stem for p in abi_dir().glob("*.json")) == sorted(PRODUCTION_CONTRACTS)
    for name in PRODUCTION_CONTRACTS:
        assert load_abi(name) == load_artifact(name)["abi"], f"abis/{name}.json: {RECOMPILE}"


def test_outputs_are_canonical_json() -> None:
    files = [*abi_dir().glob("*.json"), *artifact_dir().glob("*.json")]
    for path in files:
        text = path.read_text(encoding="utf-8")
        expected = json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False)
        assert text == expected + "\n", f"{path} is not canonical: {RECOMPILE}"


@pytest.mark.parametrize("contract", sorted(SPEC_EVENTS))
def test_spec_event_topic0(contract: str) -> None:
    signature, literal = SPEC_EVENTS[contract]
    name, params = _parse_spec_signature(signature)
    canonical = f"{name}({','.join(t for t, _, _ in params)})"
    topic0 = "0x" + keccak(text=canonical).hex()
    assert topic0 == literal

    event = _event(load_abi(contract), name)
    assert not event["anonymous"]
    abi_params = [(i["type"], i["indexed"], i["name"]) for i in event["inputs"]]
    assert abi_params == params
    abi_canonical = f"{event['name']}({','.join(i['type'] for i in event['inputs'])})"
    assert "0x" + keccak(text=abi_canonical).hex() == literal


def test_erc20_transfer_shares_topic0_but_not_topic_count() -> None:
    erc721 = _event(load_abi("MasterShares"), "Transfer")
    erc20 = _event(load_abi("ArtistCoin"), "Transfer")
    assert [i["type"] for i in erc20["inputs"]] == [i["type"] for i in erc721["inputs"]]
    assert sum(i["indexed"] for i in erc721["inputs"]) == 3  # 4 topics
    assert sum(i["indexed"] for i in erc20["inputs"]) == 2  # 3 topics


def test_abi_dir_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "X.json").write_text('[{"type": "fallback"}]', encoding="utf-8")
    monkeypatch.setenv("AUDIFI_ABI_DIR", str(tmp_path))
    assert load_abi("X") == [{"type": "fallback"}]
    with pytest.raises(FileNotFoundError, match="AUDIFI_ABI_DIR"):
        load_abi("MasterRegistry")


def test_abis_found_in_the_working_directory_of_a_plain_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-editable install (no abis/ beside the package) run from the checkout, as the
    systemd unit does, loads ./abis."""
    import indexer.contracts as contracts

    monkeypatch.delenv("AUDIFI_ABI_DIR", raising=False)
    monkeypatch.setattr(contracts, "REPO_ROOT", tmp_path / "site-packages")
    monkeypatch.chdir(REPO_ROOT)
    assert contracts.abi_dir() == REPO_ROOT / "abis"
    assert load_abi("MasterShares")


def test_source_hash_detects_changes(tmp_path: Path) -> None:
    shutil.copytree(REPO_ROOT / "contracts" / "src", tmp_path / "contracts" / "src")
    shutil.copy(REPO_ROOT / "contracts" / "solc-settings.json", tmp_path / "contracts")
    shutil.copy(REPO_ROOT / "package-lock.json", tmp_path)
    base = compute_source_hash(tmp_path)
    assert base == compute_source_hash()

    src = tmp_path / "contracts" / "src" / "DividendDistributor.sol"
    src.write_text(src.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    edited = compute_source_hash(tmp_path)
    assert edited != base

    (tmp_path / "contracts" / "src" / "test" / "Extra.sol").write_text("// x\n", encoding="utf-8")
    assert compute_source_hash(tmp_path) not in {base, edited}

    settings = tmp_path / "contracts" / "solc-settings.json"
    settings.write_text(settings.read_text().replace('"cancun"', '"osaka"'), encoding="utf-8")
    assert compute_source_hash(tmp_path) not in {base, edited}


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_compile_script_check() -> None:
    if not (REPO_ROOT / "node_modules" / "solc").is_dir():
        pytest.skip("node_modules/solc missing (npm ci)")
    proc = subprocess.run(
        ["node", "scripts/compile_contracts.mjs", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\n{RECOMPILE}"
