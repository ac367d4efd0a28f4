"""--to docker / oci / wsl on an image that went through a registry: layers/base is pushed to a local
registry, pulled into a second, empty image store, and exported there. The docker archive is loaded into a
third empty store (same image, same flattened tree), skopeo reads the OCI archive, and the WSL tarball
follows the rules WSL and its validator set. layers/server (kernel, boot loaders) checks the WSL purge."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import cli
from tests.integration.registry_support import Registry, Store, empty_store, running_registry
from tests.integration.wsl_support import TarTree, check_wsl_rules

pytestmark = [pytest.mark.integration, pytest.mark.registry]

BASE = "localhost/openos365/base:latest"
SERVER = "localhost/openos365/server:latest"


def built(ref: str) -> str:
    """An image the session's builds made (this module never starts a build of the shared layers)."""
    if subprocess.run(["podman", "image", "exists", ref], check=False).returncode != 0:
        pytest.skip(f"{ref} is not built: run `openos365 build layers/{ref.split('/')[-1].split(':')[0]}`")
    return ref


def main_store(fmt: str, ref: str = BASE) -> str:
    return subprocess.run(["podman", "image", "inspect", "--format", fmt, ref], capture_output=True, text=True,
                          check=True).stdout.strip()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory):
    """Outputs and work dirs (flattened trees: hundreds of MB), removed when the module is done."""
    directory = tmp_path_factory.mktemp("container-exports")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def registry(space: Path):
    with running_registry(space / "registry") as reg:
        yield reg


@pytest.fixture(scope="module")
def second(space: Path, registry: Registry):
    with empty_store(space / "store-2", [registry.host]) as st:
        yield st


@pytest.fixture(scope="module")
def pulled(registry: Registry, second: Store) -> str:
    """layers/base pushed from the main store, pulled into the empty second store."""
    target = f"{registry.host}/openos365/base:test"
    cli("push", built(BASE), target, "--no-tls-verify")
    cli("pull", target, "--no-tls-verify", env=second.env)
    return target


@pytest.fixture(scope="module")
def out(space: Path, pulled: str, second: Store) -> Path:
    directory = space / "out"
    work = str(space / "work-2")
    for fmt in ("docker", "oci", "tar"):
        cli("--workdir", work, "export", "--to", fmt, pulled, "-o", str(directory), env=second.env)
    cli("--workdir", work, "export", "--to", "wsl", f"docker://{pulled}", "-o", str(directory), env=second.env)
    return directory


def test_docker_archive_round_trip(space: Path, out: Path, pulled: str, second: Store) -> None:
    with empty_store(space / "store-3", []) as third:
        loaded = third.podman("load", "--input", str(out / "base.docker.tar")).stdout
        assert f"Loaded image: {pulled}" in loaded                      # name:tag kept
        assert third.image_id(pulled) == second.image_id(pulled) == main_store("{{.Id}}")
        assert json.loads(third.podman("image", "inspect", "--format", "{{json .Config}}", pulled).stdout) == \
            json.loads(main_store("{{json .Config}}"))                  # Cmd, Env, Labels kept
        work, copy = space / "work-3", space / "out-3"
        cli("--workdir", str(work), "export", "--to", "tar", pulled, "-o", str(copy), env=third.env)
        assert sha256(copy / "base.tar") == sha256(out / "base.tar")    # the same flattened tree


def test_oci_archive_is_read_by_skopeo_and_reproducible(out: Path, pulled: str, second: Store) -> None:
    archive = out / "base.oci.tar"
    info = json.loads(subprocess.run(["skopeo", "inspect", f"oci-archive:{archive}"], capture_output=True,
                                     text=True, check=True).stdout)
    assert info["Labels"]["org.opencontainers.image.title"] == "openos365 base"
    config = json.loads(subprocess.run(["skopeo", "inspect", "--config", f"oci-archive:{archive}"],
                                       capture_output=True, text=True, check=True).stdout)
    assert config["config"]["Cmd"] == ["/bin/bash"]
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))   # type: ignore[arg-type]
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == pulled
    again = out.parent / "out-again"
    cli("--workdir", str(out.parent / "work-2"), "export", "--to", "oci", pulled, "-o", str(again), env=second.env)
    assert sha256(again / "base.oci.tar") == sha256(archive)


def test_archive_source_is_converted_by_skopeo(space: Path, out: Path, second: Store) -> None:
    """No engine image: an OCI archive in, a docker archive out (skopeo), loadable with the same id."""
    converted = space / "from-archive"
    cli("--workdir", str(space / "work-archive"), "export", "--to", "docker", f"oci-archive:{out / 'base.oci.tar'}",
        "-o", str(converted), env=second.env)
    with empty_store(space / "store-4", []) as fourth:
        loaded = fourth.podman("load", "--input", str(converted / "base.docker.tar")).stdout
        assert "Loaded image: localhost/openos365/base:latest" in loaded
        assert fourth.image_id("localhost/openos365/base:latest") == main_store("{{.Id}}")


# --- WSL -------------------------------------------------------------------------------------------------

def test_wsl_tarball_follows_the_rules(out: Path) -> None:
    path = out / "base.wsl.tar.gz"
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    check_wsl_rules(TarTree(path), "base")


def test_wsl_tarball_is_reproducible(out: Path, pulled: str, second: Store) -> None:
    again = out.parent / "wsl-again"
    cli("--workdir", str(out.parent / "work-2"), "export", "--to", "wsl", pulled, "-o", str(again), env=second.env)
    assert sha256(again / "base.wsl.tar.gz") == sha256(out / "base.wsl.tar.gz")


def test_wsl_of_a_bootable_image_drops_kernel_and_boot_loaders(space: Path) -> None:
    result = cli("--workdir", str(space / "work-server"), "export", "--to", "wsl", "--wsl-format", "wsl",
                 built(SERVER), "-o", str(space / "server"))
    assert "server.wsl" in result.stderr
    tree = TarTree(space / "server" / "server.wsl")
    check_wsl_rules(tree, "server")
    status = tree.read("var/lib/dpkg/status").decode()
    for package in ("linux-image-amd64", "grub-pc-bin", "grub-efi-amd64-bin", "live-boot"):
        assert f"Package: {package}\n" not in status, package
    assert "Package: openssh-server\n" in status
    assert not [n for n in tree.members if "openos365-boot-check" in n]
    manifest = json.loads((space / "server" / "manifest.json").read_text())["artifacts"]["server.wsl"]
    assert "linux-image-amd64" in manifest["purged_packages"]
    assert not [p for p in manifest["packages"] if p.startswith(("linux-image", "grub-"))]


def test_several_formats_from_one_flatten_into_one_manifest(base_image, tmp_path):
    import json

    cfg = tmp_path / "release.yaml"
    cfg.write_text("formats:\n  tar: {}\n  wsl: {wsl_format: wsl}\n  docker: {name: base-image}\n")
    out = tmp_path / "out"
    result = cli("-v", "--workdir", str(tmp_path / "wd"), "export", "layers/base", "-c", str(cfg), "-o", str(out))
    assert result.stderr.count("> Flattening localhost/openos365/base:latest") == 1   # flattened once
    assert "is cached" in result.stderr                                        # the next format reused it
    manifest = json.loads((out / "manifest.json").read_text())["artifacts"]
    assert sorted(manifest) == ["base-image.docker", "base.tar", "base.wsl"]
    for entry in manifest.values():
        for name, meta in entry["files"].items():
            assert (out / name).stat().st_size == meta["size"]
        assert entry["sbom"] in entry["files"]       # every format of a -c export has its SBOM
    assert "3 formats of layers/base" in result.stderr
    # --to picks some of the config's formats, with the config's options for them
    cli("--workdir", str(tmp_path / "wd"), "export", "layers/base", "-c", str(cfg), "--to", "docker",
        "-o", str(tmp_path / "one"))
    assert [p.name for p in (tmp_path / "one").glob("*.tar")] == ["base-image.docker.tar"]
