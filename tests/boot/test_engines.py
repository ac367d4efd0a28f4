"""The whole chain with docker and with buildah: build -> export --to qcow2 -> boot, one boot per engine.

Each chain builds layers/server and, on top of it, a small layer of the test's own whose RUN step (run by the
engine under test) ships a boot-check.d script: the booted system reports `built_by=ENGINE`, so the test knows
the disk it booted is the image that engine built.

docker: a dockerd of the test's own (its own data root, exec root, pidfile and socket under a temp dir; no
bridge, no iptables rules), started once and stopped at the end; the chain starts from its empty store
(bootstrap -> docker import -> base -> server, classic builder). BuildKit: the same layer built by BuildKit
through Debian's docker.io CLI (BuildKit built in), on the classic-built server, its parent named by a tag
(not booted again: its image is checked layer by layer). buildah: podman's store, under image names of the
test's own, so the shared tags never move.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openos365.qemu import BootRequest, boot_test
from tests.conftest import REPO, cli

pytestmark = pytest.mark.boot

CHECK_CONTAINERFILE = """\
ARG PARENT
FROM ${PARENT}
ARG BUILT_BY
RUN mkdir -p /usr/libexec/openos365/boot-check.d \\
 && printf '#!/bin/sh\\necho built_by=%s\\n' "$BUILT_BY" > /usr/libexec/openos365/boot-check.d/built-by \\
 && chmod 0755 /usr/libexec/openos365/boot-check.d/built-by
"""
STALE_PIDFILE = REPO / ".openos365" / "test-dockerd.pid"   # a dockerd an interrupted session left running
DEBIAN_DOCKER_CLI = Path("/usr/bin/docker")                # docker.io 20.10: BuildKit without buildx


def make_project(root: Path, *, prefix: str, built_by: str, copy_parents: bool) -> Path:
    """root/layers/{base,server,check}: the repository's base and server (copied with images under `prefix`,
    or linked as they are), and the check layer; returns the check layer's directory."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "Containerfiles").symlink_to(REPO / "Containerfiles")
    layers = root / "layers"
    layers.mkdir()
    for name in ("base", "server"):
        if copy_parents:
            shutil.copytree(REPO / "layers" / name, layers / name, symlinks=True)
            yaml = layers / name / "layer.yaml"
            yaml.write_text(yaml.read_text().replace("image: localhost/openos365/", f"image: {prefix}/"))
        else:
            (layers / name).symlink_to(REPO / "layers" / name)
    check = layers / "check"
    check.mkdir()
    (check / "Containerfile").write_text(CHECK_CONTAINERFILE)
    (check / "layer.yaml").write_text(f"parent: server\nimage: {prefix}/check-{built_by}\n"
                                      f"build_args: {{BUILT_BY: {built_by}}}\n"
                                      f"export: {{hostname: {built_by}, firmware: both}}\n")
    return check


def chain(check: Path, engine: str, out: Path, env: dict[str, str] | None = None) -> tuple[Path, dict[str, str]]:
    """build -> export --to qcow2 -> boot; the disk and what the booted system reported."""
    started = time.monotonic()
    cli("build", str(check), "--engine", engine, env=env)
    built = time.monotonic()
    cli("export", "--to", "qcow2", str(check), "--engine", engine, "-o", str(out), env=env)
    exported = time.monotonic()
    disk = out / f"{check.name}.qcow2"
    report = boot_test(BootRequest(artifact=disk, workdir=REPO / ".openos365", timeout=900))
    print(f"{engine}: build {built - started:.0f}s, export {exported - built:.0f}s, "
          f"boot {time.monotonic() - exported:.0f}s")
    return disk, report.fields


def assert_booted(fields: dict[str, str], built_by: str) -> None:
    assert fields["state"] == "running" and fields["failed"] == ""
    assert fields["built_by"] == built_by          # the engine's RUN step wrote what reported it
    assert fields["hostname"] == built_by
    assert fields["root_fstype"] == "ext4" and fields["root_source"] == "/dev/vda3"
    assert fields["sudo"] == "0:0:4755"            # owners and modes came through the engine's store


def image_id(disk: Path) -> str:
    return json.loads((disk.parent / "manifest.json").read_text())["artifacts"][disk.name]["image_id"]


# docker

def _stop_stale_dockerd() -> None:
    """The dockerd an interrupted test session left behind (pidfile: pid and its root), if it still runs."""
    try:
        pid_text, root = STALE_PIDFILE.read_text().split("\n", 1)
        cmdline = Path(f"/proc/{int(pid_text)}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        STALE_PIDFILE.unlink(missing_ok=True)
        return
    if "dockerd" in cmdline and root.strip() and root.strip() in cmdline:
        os.kill(int(pid_text), signal.SIGTERM)
        for _ in range(60):
            if not Path(f"/proc/{int(pid_text)}").exists():
                break
            time.sleep(1)
        _unmount_under(Path(root.strip()))
    STALE_PIDFILE.unlink(missing_ok=True)


def _unmount_under(root: Path) -> None:
    """What dockerd leaves mounted under its directories (its netns/default), deepest first."""
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(f"{root}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A dockerd of this session's own; yields the environment that points the docker CLI at it."""
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        pytest.skip("needs dockerd and the docker CLI (apt-get install docker.io)")
    _stop_stale_dockerd()
    root = tmp_path_factory.mktemp("dockerd")
    socket = root / "docker.sock"
    (root / "daemon.json").write_text("{}\n")     # not the host's /etc/docker/daemon.json
    log = (root / "dockerd.log").open("wb")
    proc = subprocess.Popen(
        ["dockerd", f"--config-file={root / 'daemon.json'}", f"--data-root={root / 'data'}",
         f"--exec-root={root / 'exec'}", f"--pidfile={root / 'dockerd.pid'}", f"--host=unix://{socket}",
         "--bridge=none", "--iptables=false", "--ip6tables=false"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    STALE_PIDFILE.parent.mkdir(parents=True, exist_ok=True)
    STALE_PIDFILE.write_text(f"{proc.pid}\n{root}\n")
    env = {"DOCKER_HOST": f"unix://{socket}"}
    try:
        for _ in range(120):
            up = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], env={**os.environ, **env},
                                capture_output=True, text=True, check=False)
            if up.returncode == 0 or proc.poll() is not None:
                break
            time.sleep(1)
        if up.returncode != 0:
            pytest.fail(f"dockerd did not come up:\n{(root / 'dockerd.log').read_text()[-3000:]}")
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        _unmount_under(root)
        STALE_PIDFILE.unlink(missing_ok=True)
        shutil.rmtree(root / "data", ignore_errors=True)


@pytest.fixture(scope="module")
def docker_chain(dockerd, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("docker-project")
    check = make_project(root / "project", prefix="localhost/openos365-engines", built_by="docker",
                         copy_parents=False)
    return chain(check, "docker", root / "out", env={**dockerd, "DOCKER_BUILDKIT": "0"})


def docker(env: dict[str, str], *args: str) -> str:
    return subprocess.run(["docker", *args], env={**os.environ, **env}, capture_output=True, text=True,
                          check=True).stdout.strip()


def top_layer_files(env: dict[str, str], ref: str, scratch: Path) -> dict[str, bytes]:
    """The files (not directories) of the image's top layer, from `docker save`, with their content."""
    archive = scratch / "saved.tar"
    docker(env, "save", "-o", str(archive), ref)
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))   # type: ignore[arg-type]
        with tarfile.open(fileobj=outer.extractfile(manifest[0]["Layers"][-1])) as layer:
            return {m.name: layer.extractfile(m).read() if m.isfile() else b""   # type: ignore[union-attr]
                    for m in layer.getmembers() if not m.isdir()}


BUILT_BY_SCRIPT = "usr/libexec/openos365/boot-check.d/built-by"


def test_docker_chain_from_an_empty_store_boots(docker_chain, dockerd, tmp_path):
    disk, fields = docker_chain
    assert_booted(fields, "docker")
    ref = "localhost/openos365-engines/check-docker:latest"
    assert image_id(disk) == docker(dockerd, "image", "inspect", "--format", "{{.Id}}", ref)   # the image built
    # the RUN step's layer holds what it wrote and nothing the builder mounted for it (/etc/hosts, resolv.conf)
    assert top_layer_files(dockerd, ref, tmp_path) == {BUILT_BY_SCRIPT: b"#!/bin/sh\necho built_by=docker\n"}


def test_docker_buildkit_builds_on_a_parent_named_by_tag(docker_chain, dockerd, tmp_path):
    """BuildKit through Debian's docker.io CLI (built in, no buildx), on the server the classic builder made.
    Not booted (the docker chain boots once, above): the image is checked layer by layer instead."""
    if not DEBIAN_DOCKER_CLI.exists():
        pytest.skip(f"needs Debian's docker.io CLI ({DEBIAN_DOCKER_CLI}), which has BuildKit without buildx")
    cli_dir = tmp_path / "bin"
    cli_dir.mkdir()
    (cli_dir / "docker").symlink_to(DEBIAN_DOCKER_CLI)
    env = {**dockerd, "DOCKER_BUILDKIT": "1", "PATH": f"{cli_dir}:{os.environ['PATH']}"}
    check = make_project(tmp_path / "project", prefix="localhost/openos365-engines", built_by="docker-buildkit",
                         copy_parents=False)
    built = cli("-v", "build", str(check), "--engine", "docker", env=env)
    log = built.stdout + built.stderr
    server = docker(dockerd, "image", "inspect", "--format", "{{.Id}}", "localhost/openos365/server:latest")
    assert "builds with BuildKit" in log and "--progress=plain" in log
    assert f"PARENT=localhost/openos365/server:{server.removeprefix('sha256:')[:12]}" in log   # by tag, not id
    ref = "localhost/openos365-engines/check-docker-buildkit:latest"
    layers = json.loads(docker(env, "image", "inspect", "--format", "{{json .RootFS.Layers}}", ref))
    server_layers = json.loads(docker(env, "image", "inspect", "--format", "{{json .RootFS.Layers}}", server))
    assert layers[:-1] == server_layers        # on top of that very server image, one layer more
    assert top_layer_files(env, ref, tmp_path) == {BUILT_BY_SCRIPT: b"#!/bin/sh\necho built_by=docker-buildkit\n"}


@pytest.mark.parametrize("buildkit", ["0", "1"])
def test_a_root_layer_builds_and_a_failing_run_step_is_named_with_either_builder(docker_chain, dockerd, tmp_path,
                                                                                 buildkit):
    """A layer `from:` the bootstrapped image (passed to BuildKit by a tag, never a bare id): one RUN step
    works, the next fails, and the error names the layer, the step and its exit status."""
    if buildkit == "1" and not DEBIAN_DOCKER_CLI.exists():
        pytest.skip(f"needs Debian's docker.io CLI ({DEBIAN_DOCKER_CLI}), which has BuildKit without buildx")
    cli_dir = tmp_path / "bin"
    cli_dir.mkdir()
    (cli_dir / "docker").symlink_to(DEBIAN_DOCKER_CLI if buildkit == "1" else shutil.which("docker"))
    layer = tmp_path / "layers" / "broken"
    layer.mkdir(parents=True)
    (layer / "layer.yaml").write_text("from: localhost/openos365/debian:trixie\n"
                                      f"image: localhost/openos365-engines/broken{buildkit}\n")
    (layer / "Containerfile").write_text("ARG PARENT\nFROM ${PARENT}\nRUN test -x /bin/sh\n"
                                         "RUN echo about to fail && exit 3\n")
    result = cli("build", str(layer), "--engine", "docker", check=False,
                 env={**dockerd, "DOCKER_BUILDKIT": buildkit, "PATH": f"{cli_dir}:{os.environ['PATH']}"})
    assert result.returncode == 1, result.stderr
    assert "layer broken: " in result.stderr and "Containerfile: STEP " in result.stderr
    assert "RUN echo about to fail && exit 3 failed with exit status 3" in result.stderr
    assert "Traceback" not in result.stderr


def test_docker_without_a_daemon_says_how_to_start_one(tmp_path):
    result = cli("build", "layers/server", "--engine", "docker", check=False,
                 env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock", "DOCKER_BUILDKIT": "0"})
    assert result.returncode == 3
    assert f"docker cannot reach its daemon at unix://{tmp_path}/none.sock" in result.stderr
    assert "DOCKER_HOST" in result.stderr and "Traceback" not in result.stderr


# buildah

def test_buildah_chain_shares_podmans_store_and_boots(server_image, tmp_path):
    check = make_project(tmp_path / "project", prefix="localhost/openos365-engines-buildah", built_by="buildah",
                         copy_parents=True)
    disk, fields = chain(check, "buildah", tmp_path / "out")
    assert_booted(fields, "buildah")
    ids = {}
    for ref in (server_image, "localhost/openos365-engines-buildah/server:latest"):
        ids[ref] = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True,
                                  text=True, check=True).stdout.strip()
    # buildah's build of layers/server took every step from podman's cache: the same image, byte for byte
    assert len(set(ids.values())) == 1, ids
