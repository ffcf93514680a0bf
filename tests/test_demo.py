"""The README's run command: the demo runs to completion non-interactively and leaves no
process behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.fixtures.daemon import environ_without_audifi

ROOT = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes; /proc tells.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


@pytest.mark.slow
@pytest.mark.anvil
def test_demo_runs_and_cleans_up() -> None:
    # As root the private PostgreSQL runs as the 'postgres' user, which cannot enter pytest's
    # private tmp folders: use a world-traversable one.
    tmp_path = Path(tempfile.mkdtemp(prefix="audifi-demo-test-"))
    tmp_path.chmod(0o755)
    env = environ_without_audifi()
    result = subprocess.run(
        [sys.executable, "-m", "indexer", "demo", "--data-dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=240,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "private PostgreSQL" in out
    assert "REORG of depth 2" in out
    assert "dividends: 1 deposit(s), 0.25 ETH" in out  # the reorged-in deposit, not the 5 ETH
    assert "artist coin: Nova Coin (NOVA) supply 1,000,000" in out
    assert re.search(r"token_ids\s+tiers", out)
    assert "0 pending, 0 dead letters" in out
    assert "stopped everything the demo started" in out
    pids = [int(p) for p in re.findall(r"\(pid (\d+)", out)]
    assert len(pids) == 2, out  # anvil and the private PostgreSQL
    assert not [p for p in pids if _alive(p)], "the demo left processes running"
    shutil.rmtree(tmp_path, ignore_errors=True)
