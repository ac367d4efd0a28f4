"""A developer's own account, no root, no sudo: build, export every format, boot, same bytes as root.

CI runs as root, so this makes a throw-away user with subordinate ids (the one-time setup the README gives),
copies the project into its home, gives it a venv of Debian's Python, and runs openos365 as that user with
rootless podman: its own image store, bootstrapped and built from scratch.
"""

from __future__ import annotations

import json
import pwd
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REPO, cli

pytestmark = pytest.mark.integration

USER = "openos365-ci"
PROJECT = ("pyproject.toml", "README.md", "toolkit", "layers", "Containerfiles", "tests")


def as_user(command: str, timeout: int = 3600) -> subprocess.CompletedProcess[str]:
    """A login shell of the user (its own PATH without /usr/sbin, its own podman store)."""
    return subprocess.run(["su", "-", USER, "-c", command], capture_output=True, text=True, timeout=timeout,
                          check=False)


def ok(command: str, timeout: int = 3600) -> subprocess.CompletedProcess[str]:
    result = as_user(command, timeout)
    assert result.returncode == 0, f"{command}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
    return result


def openos365(args: str, timeout: int = 3600) -> subprocess.CompletedProcess[str]:
    """openos365 as the user; global options (--verbose) may lead args."""
    return ok(f"cd ~/openos365 && ~/venv/bin/openos365 --workdir ~/wd {args}", timeout)


@pytest.fixture(scope="module")
def home() -> Path:
    if subprocess.run(["id", USER], capture_output=True, check=False).returncode != 0:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", USER], check=True)
    if f"\n{USER}:" not in "\n" + Path("/etc/subuid").read_text():
        subprocess.run(["usermod", "--add-subuids", "400000-465535", "--add-subgids", "400000-465535", USER],
                       check=True)
    home = Path(pwd.getpwnam(USER).pw_dir)
    project = home / "openos365"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir()
    for name in PROJECT:
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, project / name)
    subprocess.run(["chown", "-R", f"{USER}:{USER}", str(project)], check=True)
    ok("test -x ~/venv/bin/python || /usr/bin/python3 -m venv ~/venv")
    ok("~/venv/bin/pip install -q ~/openos365 pytest", timeout=900)
    return home


def test_hostile_layer_and_tree_tests_pass_as_a_normal_user(home):
    """The trust-boundary unit tests, as a user: the non-root paths of tarapply and imagetree."""
    result = ok("cd ~/openos365 && ~/venv/bin/python -m pytest -q -p no:cacheprovider tests/unit/test_tarapply.py "
                "tests/unit/test_trust_boundary.py tests/unit/test_concurrency.py", timeout=900)
    assert " passed" in result.stdout and "failed" not in result.stdout


@pytest.fixture(scope="module")
def built(home: Path) -> str:
    result = openos365("build layers/server")
    assert "built localhost/openos365/server:latest" in result.stderr.replace("\n", " ")
    return "localhost/openos365/server:latest"


def test_doctor_says_rootless_is_ready(home):
    assert "rootless: ready (podman unshare" in ok("~/venv/bin/openos365 doctor || true").stderr


def test_tar_keeps_root_owners_and_setuid_bits(home, built):
    openos365("export --to tar layers/server -o ~/out")
    with tarfile.open(home / "out/server.tar") as tar:
        for name in ("./usr/bin/passwd", "./usr/bin/sudo"):
            member = tar.getmember(name)
            assert (member.uid, member.gid) == (0, 0), name
            assert member.mode & 0o7777 == 0o4755, name
        shadow = tar.getmember("./etc/shadow")
        assert shadow.uid == 0 and shadow.gid == 42      # root:shadow, as the image says


@pytest.mark.parametrize("fmt", ["qcow2", "iso", "kis", "wsl"])
def test_every_format_exports_as_a_normal_user(home, built, fmt):
    openos365(f"export --to {fmt} layers/server -o ~/out-{fmt}")
    files = [p for p in (home / f"out-{fmt}").iterdir() if p.name.endswith(".sha256")]
    assert files, f"--to {fmt} wrote no artifact"
    for checksum in files:
        artifact = checksum.with_name(checksum.name.removesuffix(".sha256"))
        assert artifact.stat().st_uid == pwd.getpwnam(USER).pw_uid
    manifest = json.loads((home / f"out-{fmt}/manifest.json").read_text())
    assert manifest["artifacts"]


def test_rootless_qcow2_has_the_same_bytes_as_roots(home, built, tmp_path):
    """Same image, same options: the user's export and root's export of that image are identical."""
    openos365("export --to qcow2 layers/server -o ~/out-same")
    ok("podman save --format oci-archive -o ~/server.oci.tar localhost/openos365/server:latest")
    cli("--workdir", str(tmp_path / "wd"), "export", "--to", "qcow2", f"oci-archive:{home / 'server.oci.tar'}",
        "--name", "server", "--hostname", "server", "-o", str(tmp_path / "root"))
    ours = (home / "out-same/server.qcow2.sha256").read_text().split()[0]
    roots = (tmp_path / "root/server.qcow2.sha256").read_text().split()[0]
    assert ours == roots


@pytest.mark.boot
def test_the_users_disk_boots_with_root_owned_setuid_sudo(home, built):
    openos365("export --to qcow2 layers/server -o ~/out-boot")
    result = openos365("--verbose test ~/out-boot/server.qcow2 --firmware uefi --grow 2G", timeout=1200)
    text = result.stderr.replace("\n", " ")
    assert "state running" in text
    assert "report: sudo=0:0:4755" in text
