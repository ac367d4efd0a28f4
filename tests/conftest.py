"""Shared test fixtures. Unit tests need nothing; integration tests need podman and root; boot tests qemu."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "openos365.cli"]


def cli(*args: str, check: bool = True, env: dict[str, str] | None = None, cwd: Path = REPO,
        timeout: int = 3600) -> subprocess.CompletedProcess[str]:
    """Run the openos365 CLI as a user would, from the repo root."""
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run([*CLI, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
                            check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"openos365 {' '.join(args)} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}")
    return result


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip, with a reason, what this host cannot run (CI installs everything, so nothing skips there)."""
    is_root = os.geteuid() == 0
    has_podman = shutil.which("podman") is not None
    has_qemu = shutil.which("qemu-system-x86_64") is not None
    for item in items:
        if ("integration" in item.keywords or "boot" in item.keywords or "registry" in item.keywords) and not (
                is_root and has_podman):
            item.add_marker(pytest.mark.skip(reason="needs root and podman"))
        if "boot" in item.keywords and not has_qemu:
            item.add_marker(pytest.mark.skip(reason="needs qemu-system-x86_64"))
    # The arm64 tests go last: their emulated build runs in the background meanwhile (arm64_server below).
    items.sort(key=lambda item: "arm64" in item.keywords)


ARM64_BUILD = ["build", "layers/server", "--arch", "arm64"]
arm64_build_key = pytest.StashKey[tuple[subprocess.Popen[bytes], Path]]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start `openos365 build layers/server --arch arm64` as soon as an arm64 test is collected to run. Built
    through qemu-user it takes about 15 minutes, mostly one core busy with emulated dpkg, so it overlaps the
    amd64 tests on the other core instead of adding its whole time to the run; arm64_server waits for it."""
    if session.config.option.collectonly or not any(
            "arm64" in item.keywords and not item.get_closest_marker("skip") for item in session.items):
        return
    log = Path(tempfile.mkstemp(prefix="openos365-arm64-build-", suffix=".log")[1])
    with log.open("wb") as out:
        process = subprocess.Popen([*CLI, *ARM64_BUILD], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)   # its own group: see below
    session.config.stash[arm64_build_key] = (process, log)


def pytest_sessionfinish(session: pytest.Session) -> None:
    started = session.config.stash.get(arm64_build_key, None)
    if started is not None:
        process, log = started
        if process.poll() is None:   # the run ended (or was interrupted) before an arm64 test waited for it
            os.killpg(process.pid, signal.SIGTERM)   # the CLI and the engine it runs
            process.wait(timeout=60)
        log.unlink(missing_ok=True)


MUST_RUN_IN_CI = ("integration", "boot", "registry")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """In CI (CI=true) an integration, registry or boot test that skips fails instead: CI installs
    everything they need, so a skip there means something is missing, and a skipped test proves nothing."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") == "true" and any(m in item.keywords for m in MUST_RUN_IN_CI):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run it: {reason}"


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tool's cache/scratch dir for the session: the repo's own, so flattened trees are reused."""
    return REPO / ".openos365"


@pytest.fixture(scope="session")
def server_image() -> str:
    """layers/server built once per session (cache hits when nothing changed)."""
    cli("build", "layers/server")
    return "localhost/openos365/server:latest"


@pytest.fixture(scope="session")
def arm64_server(request: pytest.FixtureRequest) -> str:
    """layers/server built for arm64: the background build started at collection, waited for here."""
    started = request.config.stash.get(arm64_build_key, None)
    if started is None:   # not started at collection: build it now
        cli(*ARM64_BUILD, timeout=7200)
    else:
        process, log = started
        returncode = process.wait(timeout=7200)
        if returncode != 0:
            raise AssertionError(f"openos365 {' '.join(ARM64_BUILD)} exited {returncode}\n"
                                 f"{log.read_text(errors='replace')[-5000:]}")
    return "localhost/openos365/server:arm64"


@pytest.fixture(scope="session")
def base_image() -> str:
    cli("build", "layers/base")
    return "localhost/openos365/base:latest"
