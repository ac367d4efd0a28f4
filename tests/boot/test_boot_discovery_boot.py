"""Boot-time kernel discovery, booted: an image with versioned kernels only (no /vmlinuz links, none made on
upgrade, as Fedora and Arch lay kernels out) gets a grub.cfg that finds the newest kernel at boot. The disk's
first boot installs a newer kernel inside the guest (tests/layers/server-versioned's boot-check script);
the second boot must boot it, through Debian's signed shim and GRUB under enforcing Secure Boot, where GRUB
cannot load modules from disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openos365.qemu import BootRequest, boot_test
from tests.conftest import REPO, cli

pytestmark = pytest.mark.boot
GIB = 1 << 30
LAYER = "tests/layers/server-versioned"


@pytest.fixture(scope="module")
def disk(server_image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("versioned")
    cli("export", "--to", "qcow2", LAYER, "-o", str(out))
    return out / "server-versioned.qcow2"


def test_a_kernel_installed_inside_the_guest_is_booted_next_time(disk: Path):
    manifest = json.loads((disk.parent / "manifest.json").read_text())["artifacts"][disk.name]
    exported = next(p for p in manifest["packages"] if p.startswith("linux-image-") and p[12].isdigit())
    exported_version = exported.split("=")[0].removeprefix("linux-image-")
    report = boot_test(BootRequest(artifact=disk, workdir=REPO / ".openos365", timeout=900, firmware="uefi",
                                   secure_boot=True, grow=GIB, boots=2))
    first, second = report.earlier[0], report.fields
    for fields in (first, second):
        assert fields["state"] == "running" and fields["failed"] == "" and fields["secure_boot"] == "enabled", fields
    assert first["boot_image"] == f"/boot/vmlinuz-{exported_version}", first   # found at boot: the only kernel
    assert first["kernel_added"] == "99.0.0-openos365", first
    assert second["boot_image"] == "/boot/vmlinuz-99.0.0-openos365", second     # the upgrade, found at boot
    assert "kernel_added" not in second
