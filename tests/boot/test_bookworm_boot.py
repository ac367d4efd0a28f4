"""The same layer tree on Debian 12, the previous release (--base debian-bookworm): images tagged with the
release, and every bootable format booted: the disk under BIOS (growing) and UEFI with Secure Boot, the live
ISO as a USB stick under UEFI, and KIS by direct kernel boot. One export writes all three from one flatten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openos365.qemu import BootRequest, boot_test
from tests.conftest import REPO, cli

pytestmark = pytest.mark.boot
GIB = 1 << 30


@pytest.fixture(scope="module")
def bookworm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bookworm")
    cli("export", "--to", "qcow2,iso,kis", "layers/server", "--base", "debian-bookworm", "-o", str(out))
    return out


def boot(artifact: Path, **kwargs) -> dict[str, str]:
    fields = boot_test(BootRequest(artifact=artifact, workdir=REPO / ".openos365", timeout=900, **kwargs)).fields
    assert fields["state"] == "running" and fields["failed"] == "", fields
    assert fields["os"] == "debian-12", fields   # Debian 12 itself booted, not the default release
    return fields


def test_images_and_artifacts_name_the_release(bookworm):
    manifest = json.loads((bookworm / "manifest.json").read_text())["artifacts"]
    assert set(manifest) == {"server-bookworm.qcow2", "server-bookworm.iso", "server-bookworm.kis"}
    assert {entry["image_ref"] for entry in manifest.values()} == {"localhost/openos365/server:bookworm"}
    assert any(p.startswith("linux-image-6.1.") for p in manifest["server-bookworm.qcow2"]["packages"])


def test_disk_boots_under_bios_and_grows(bookworm):
    fields = boot(bookworm / "server-bookworm.qcow2", firmware="bios", grow=GIB)
    assert int(fields["root_fs_size"]) > GIB   # grown from about 1.3 GiB to fill the enlarged disk


def test_disk_boots_under_uefi_with_secure_boot(bookworm):
    fields = boot(bookworm / "server-bookworm.qcow2", firmware="uefi", secure_boot=True)
    assert fields["secure_boot"] == "enabled"


def test_iso_boots_from_a_usb_stick_under_uefi(bookworm):
    fields = boot(bookworm / "server-bookworm.iso", firmware="uefi", medium="usb")
    assert fields["root_fstype"] == "overlay"


def test_kis_boots_by_direct_kernel_boot(bookworm):
    fields = boot(bookworm)
    assert fields["root_fstype"] == "overlay" and "boot=live" in fields["cmdline"]
