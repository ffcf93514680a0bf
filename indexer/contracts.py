"""Load the AudiFi contract ABIs and compiled reference artifacts.

ABIs (``abis/<Name>.json``, a JSON array) and build artifacts (``contracts/build/<Name>.json``)
are produced by ``node scripts/compile_contracts.mjs``. The ABI directory can be overridden with
the ``AUDIFI_ABI_DIR`` environment variable.

Staleness of the artifacts can be checked without node: :func:`compute_source_hash` recomputes
the ``sourceHash`` the compile script writes into every artifact. Recipe (identical to the one
documented in ``scripts/compile_contracts.mjs`` -- keep both in sync)::

    sha256 hex of the UTF-8 bytes of canonical JSON (keys sorted recursively, separators ","
    and ":" without whitespace, non-ASCII not escaped) of
      {
        "compiler": {"solc": <package-lock.json packages["node_modules/solc"].version>,
                     "openzeppelin": <packages["node_modules/@openzeppelin/contracts"].version>},
        "settings": <contracts/solc-settings.json, parsed>,
        "sources":  {<path of each *.sol below contracts/src, relative, "/"-separated>:
                     <sha256 hex of the file's bytes>}
      }
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Final

from indexer.errors import MissingFilesError

__all__ = [
    "ABI_DIR_ENV",
    "PRODUCTION_CONTRACTS",
    "REPO_ROOT",
    "abi_dir",
    "artifact_dir",
    "canonical_json",
    "compute_source_hash",
    "load_abi",
    "load_artifact",
    "shipped_dir_candidates",
    "source_files",
]

ABI_DIR_ENV: Final = "AUDIFI_ABI_DIR"
REPO_ROOT: Final = Path(__file__).resolve().parent.parent
PRODUCTION_CONTRACTS: Final = (
    "ArtistCoin",
    "ArtistCoinFactory",
    "DividendDistributor",
    "MasterRegistry",
    "MasterShares",
)


def shipped_dir_candidates(env_var: str, folder: str) -> list[Path]:
    """Where a folder the project ships (``migrations``, ``abis``) may be, in order: the
    directory named by ``env_var`` alone when it is set; else ``<repo>/<folder>`` (a checkout
    or an editable install) and ``./<folder>`` (a non-editable install run from the checkout,
    as the systemd unit does)."""
    override = os.environ.get(env_var)
    if override:
        return [Path(override)]
    return [REPO_ROOT / folder, Path.cwd() / folder]


def abi_dir() -> Path:
    """Directory holding ``<Name>.json`` ABI files: the first of
    :func:`shipped_dir_candidates` that exists, else the first (named by the error then)."""
    candidates = shipped_dir_candidates(ABI_DIR_ENV, "abis")
    return next((c for c in candidates if c.is_dir()), candidates[0])


def artifact_dir(root: Path = REPO_ROOT) -> Path:
    """Directory holding the compiled artifacts ``<Name>.json``."""
    return root / "contracts" / "build"


def _check_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"invalid contract name: {name!r}")


def load_abi(name: str) -> list[dict[str, Any]]:
    """Return the ABI (list of entries) of contract ``name`` from the ABI directory."""
    _check_name(name)
    path = abi_dir() / f"{name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingFilesError(
            f"ABI {path} not found (set {ABI_DIR_ENV} or run node scripts/compile_contracts.mjs)"
        ) from None
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise ValueError(f"{path} is not a JSON array of ABI entries")
    return data


def load_artifact(name: str, root: Path = REPO_ROOT) -> dict[str, Any]:
    """Return ``{"contractName", "abi", "bytecode", "deployedBytecode", "sourceHash"}``."""
    _check_name(name)
    path = artifact_dir(root) / f"{name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingFilesError(
            f"artifact {path} not found (run node scripts/compile_contracts.mjs)"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def canonical_json(value: Any) -> str:
    """Canonical JSON as used by the source hash (same bytes as JS ``JSON.stringify``)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def source_files(root: Path = REPO_ROOT) -> dict[str, Path]:
    """All ``*.sol`` files below ``contracts/src``, keyed by "/"-separated relative path."""
    src = root / "contracts" / "src"
    found = {p.relative_to(src).as_posix(): p for p in src.rglob("*.sol") if p.is_file()}
    return dict(sorted(found.items()))


def _locked_versions(root: Path) -> dict[str, str]:
    lock = json.loads((root / "package-lock.json").read_text(encoding="utf-8"))
    packages = lock.get("packages", {})
    versions: dict[str, str] = {}
    for key, pkg in (("solc", "solc"), ("openzeppelin", "@openzeppelin/contracts")):
        version = packages.get(f"node_modules/{pkg}", {}).get("version")
        if not isinstance(version, str):
            raise ValueError(f"{pkg} missing from {root / 'package-lock.json'}")
        versions[key] = version
    return versions


def compute_source_hash(root: Path = REPO_ROOT) -> str:
    """The ``sourceHash`` the compile script would write for the current sources (see module
    docstring for the recipe)."""
    settings = json.loads((root / "contracts" / "solc-settings.json").read_text(encoding="utf-8"))
    digests = {
        rel: hashlib.sha256(path.read_bytes()).hexdigest()
        for rel, path in source_files(root).items()
    }
    document = {"compiler": _locked_versions(root), "settings": settings, "sources": digests}
    return hashlib.sha256(canonical_json(document).encode("utf-8")).hexdigest()
