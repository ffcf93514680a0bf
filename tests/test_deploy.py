"""The two ways the daemon is deployed (SPEC §5): in a container and under systemd.

No Docker daemon runs here, so the container is checked through what its image is made of:
the ``Dockerfile`` is read, its build stage's files are copied and built into a wheel the way
the image builds it, and its runtime stage is laid out as the image lays it out (the wheel
installed, the ``COPY``'d folders, the ``ENV`` variables, the ``WORKDIR``), outside the
checkout. That install migrates a database, indexes a chain, answers the image's
``HEALTHCHECK`` command and stops on the image's ``STOPSIGNAL`` with exit code 0. A module or
a data file the wheel leaves out, a path that only resolves inside the checkout, or a
``COPY`` the image lacks fails here.

The systemd unit in ``config/`` is checked by ``systemd-analyze verify`` (unknown keys,
malformed values, commands that are not executable), with its ``/opt/audifi-indexer`` paths
pointed at a temporary folder.
"""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from indexer.localpg import free_port
from tests.fixtures.chains import AnvilNode, deploy_audifi, send_tx
from tests.fixtures.daemon import daemon_env

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "config" / "audifi-indexer.service"
INSTALL_DIR = "/opt/audifi-indexer"


# --------------------------------------------------------------------------------- the Dockerfile


@dataclass
class Stage:
    """One ``FROM`` stage of a Dockerfile: what it copies, sets and runs."""

    name: str
    workdir: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    copies: list[tuple[str | None, list[str], str]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    instructions: dict[str, str] = field(default_factory=dict)


def dockerfile_stages(path: Path) -> dict[str, Stage]:
    """The stages of ``path`` by name (``FROM … AS name``): continuation lines joined,
    comments dropped; enough of the syntax for this project's Dockerfile."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            stage = Stage(words[-1] if len(words) >= 3 and words[-2].upper() == "AS" else "")
            stages[stage.name] = stage
            continue
        assert stage is not None, f"{path}: {keyword} before FROM"
        if keyword == "WORKDIR":
            stage.workdir = rest.strip()
        elif keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                stage.env[key] = value
        elif keyword == "COPY":
            words = shlex.split(rest)
            origin = None
            flags = [w for w in words if w.startswith("--")]
            for flag in flags:
                if flag.startswith("--from="):
                    origin = flag.removeprefix("--from=")
            args = [w for w in words if not w.startswith("--")]
            stage.copies.append((origin, args[:-1], args[-1]))
        elif keyword == "RUN":
            stage.runs.append(rest)
        else:
            stage.instructions[keyword] = rest
    return stages


def copy_into(stage: Stage, root: Path, context: Path) -> None:
    """Carry out ``stage``'s ``COPY``s from the build ``context`` under ``root`` (the image's
    ``/``); a ``COPY --from`` another stage is the caller's business."""
    for origin, sources, target in stage.copies:
        if origin is not None:
            continue
        base = target if target.startswith("/") else f"{stage.workdir}/{target}"
        for source in sources:
            src = context / source
            assert src.exists(), f"the Dockerfile copies {source}, which the project lacks"
            if base.endswith("/"):
                dest = root / base.strip("/") / src.name
            else:
                dest = root / base.strip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dest, dirs_exist_ok=True)
            else:
                shutil.copy2(src, dest)


@dataclass
class Image:
    """The runtime stage of the Dockerfile laid out under ``root`` (the image's ``/``)."""

    root: Path
    site: Path
    stage: Stage
    entry_points: configparser.ConfigParser

    def path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` plus the image's ``ENV`` (its absolute paths moved under ``root``), with
        the installed wheel first on the import path."""
        env = dict(base)
        for key, value in self.stage.env.items():
            env[key] = str(self.path(value)) if value.startswith("/") else value
        env["PYTHONPATH"] = str(self.site)
        return env

    def exec_form(self, keyword: str) -> list[str]:
        """An ``ENTRYPOINT``/``CMD`` written in exec form (a JSON list)."""
        value = json.loads(self.stage.instructions[keyword])
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), value
        return value

    def command(self, *args: str) -> list[str]:
        """The console script ``audifi-indexer`` as the wheel declares it, with ``args``."""
        target = self.entry_points["console_scripts"]["audifi-indexer"]
        module, _, function = target.partition(":")
        code = f"import sys; from {module} import {function} as main; sys.exit(main())"
        return [sys.executable, "-c", code, *args]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The wheel built from the build stage's files, the runtime stage laid out around it."""
    stages = dockerfile_stages(ROOT / "Dockerfile")
    assert {"build", "runtime"} <= set(stages), f"stages: {sorted(stages)}"
    build, runtime = stages["build"], stages["runtime"]
    assert any("pip wheel" in run for run in build.runs), build.runs
    assert any(origin == "build" for origin, _, _ in runtime.copies)

    tmp = tmp_path_factory.mktemp("image")
    build_root, root = tmp / "build-stage", tmp / "runtime-stage"
    copy_into(build, build_root, ROOT)
    wheels = tmp / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
         str(wheels), str(build_root / build.workdir.strip("/"))],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PIP_CONSTRAINT": str(ROOT / "constraints.txt")},
    )  # fmt: skip
    assert built.returncode == 0, f"pip wheel failed:\n{built.stdout}\n{built.stderr}"
    (wheel,) = wheels.glob("audifi_indexer-*.whl")

    site = tmp / "site-packages"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    copy_into(runtime, root, ROOT)
    (root / runtime.workdir.strip("/")).mkdir(parents=True, exist_ok=True)
    entry_points = configparser.ConfigParser()
    (dist_info,) = site.glob("audifi_indexer-*.dist-info")
    entry_points.read(dist_info / "entry_points.txt")
    return Image(root, site, runtime, entry_points)


def test_the_wheel_holds_every_module_of_the_package(image: Image) -> None:
    """Every module and data file of ``indexer/`` is in the wheel the image installs."""
    wanted = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "indexer").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    shipped = {
        path.relative_to(image.site).as_posix()
        for path in (image.site / "indexer").rglob("*")
        if path.is_file()
    }
    assert wanted - shipped == set(), f"left out of the wheel: {sorted(wanted - shipped)}"


@pytest.mark.anvil
def test_the_image_migrates_indexes_answers_its_healthcheck_and_stops_on_sigterm(
    image: Image, anvil_factory: Any, empty_database_url: str, tmp_path: Path
) -> None:
    node: AnvilNode = anvil_factory()
    contracts = deploy_audifi(node.w3)
    artist, master = uuid.uuid4(), uuid.uuid4()
    port = free_port()
    env = image.env(daemon_env(empty_database_url, node.url, contracts))
    env["AUDIFI_HTTP_PORT"] = str(port)
    workdir = image.path(image.stage.workdir)
    assert image.exec_form("ENTRYPOINT") == ["audifi-indexer"]

    migrated = subprocess.run(
        image.command("migrate"), cwd=workdir, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr
    where = subprocess.run(
        [sys.executable, "-c", "import indexer; print(indexer.__file__)"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(image.site), where.stdout

    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users (id, email) VALUES (%s, %s)", (artist, f"{artist}@example.org")
        )
        conn.execute(
            "INSERT INTO masters (id, artist_id, title) VALUES (%s, %s, 'Song')",
            (master, artist),
        )
    holder = node.accounts[1]
    send_tx(
        node.w3,
        contracts.registry.functions.deployMasterAndMint(master.bytes, "M", "M", holder, 1, 7),
    )
    send_tx(node.w3, contracts.distributor.functions.record(master.bytes, 10**18))
    head = int(node.w3.eth.block_number)

    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log:
        daemon = subprocess.Popen(
            image.command(*image.exec_form("CMD")),
            cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        progress = (
            "SELECT (SELECT count(*) FROM nft_shares), (SELECT count(*) FROM dividend_events), "
            "(SELECT coalesce(max(indexed_block), -1) FROM indexer_state)"
        )
        wanted = (7, 1, head)
        seen: tuple[Any, ...] | None = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and seen != wanted:
            assert daemon.poll() is None, log_path.read_text()[-3000:]
            with psycopg.connect(empty_database_url, autocommit=True) as conn:
                seen = conn.execute(progress).fetchone()
            time.sleep(0.2)
        assert seen == wanted, (seen, log_path.read_text()[-3000:])

        check = healthcheck(image, env)
        deadline = time.monotonic() + 20
        while check.returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.3)
            check = healthcheck(image, env)
        assert check.returncode == 0, (check.stdout, check.stderr)

        stop = getattr(signal, image.stage.instructions.get("STOPSIGNAL", "SIGTERM").strip())
        daemon.send_signal(stop)
        assert daemon.wait(timeout=30) == 0, log_path.read_text()[-3000:]
        assert healthcheck(image, env).returncode != 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=10)


def healthcheck(image: Image, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The image's ``HEALTHCHECK … CMD <shell command>``, run as Docker runs it."""
    spec = image.stage.instructions["HEALTHCHECK"]
    assert " CMD " in f" {spec} ", spec
    command = spec.split("CMD", 1)[1].strip()
    return subprocess.run(
        ["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip


# --------------------------------------------------------------------------------- systemd


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail(
            "systemd-analyze is not installed: it checks config/audifi-indexer.service. "
            "Install it with `apt-get install -y systemd` (Debian/Ubuntu)."
        )
    text = UNIT.read_text()
    assert INSTALL_DIR in text
    executable = tmp_path / ".venv" / "bin" / "audifi-indexer"
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(INSTALL_DIR, str(tmp_path)))

    done = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    problems = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and not problems, f"systemd-analyze verify:\n{problems}"

    # the commands it starts are the daemon's own
    service = configparser.ConfigParser(strict=False, interpolation=None)
    service.read_string(text)
    commands = [service["Service"][key] for key in ("ExecStartPre", "ExecStart")]
    assert [shlex.split(c)[1:] for c in commands] == [["migrate"], ["run"]], commands
