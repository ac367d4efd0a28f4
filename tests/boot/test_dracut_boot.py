"""layers/server-dracut: the server with dracut in place of initramfs-tools, booted in every way its initrd
finds the root: the disk by UUID (UEFI, growing), the live ISO through dmsquash-live (as a USB stick under
UEFI) and KIS by direct kernel boot (root=live: on the squashfs). Its boot-check script says which initrd
generator made the running initrd, from the journal's first lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openos365.qemu import BootRequest, boot_test
from tests.conftest import REPO, cli

pytestmark = pytest.mark.boot
GIB = 1 << 30


@pytest.fixture(scope="module")
def dracut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dracut")
    cli("export", "--to", "qcow2,iso,kis", "layers/server-dracut", "-o", str(out))
    return out


def boot(artifact: Path, **kwargs) -> dict[str, str]:
    fields = boot_test(BootRequest(artifact=artifact, workdir=REPO / ".openos365", timeout=900, **kwargs)).fields
    assert fields["state"] == "running" and fields["failed"] == "", fields
    assert fields["initrd"] == "dracut", fields   # dracut's initrd found the root, not initramfs-tools'
    return fields


def test_the_image_has_dracut_and_no_initramfs_tools(dracut):
    packages = json.loads((dracut / "manifest.json").read_text())["artifacts"]["server-dracut.qcow2"]["packages"]
    names = {p.partition("=")[0] for p in packages}
    assert "dracut-live" in names
    # the generators and live-boot are gone; Debian 13's dracut keeps initramfs-tools-bin (lsinitramfs and
    # unmkinitramfs, which read any initrd)
    assert not names & {"initramfs-tools", "initramfs-tools-core", "live-boot", "live-boot-initramfs-tools"}


def test_disk_boots_under_uefi_and_grows(dracut):
    fields = boot(dracut / "server-dracut.qcow2", firmware="uefi", grow=GIB)
    assert fields["root_fstype"] == "ext4" and int(fields["root_fs_size"]) > 2 * GIB


def test_live_iso_boots_from_a_usb_stick_through_dmsquash_live(dracut):
    fields = boot(dracut / "server-dracut.iso", firmware="uefi", medium="usb")
    assert fields["root_source"] == "LiveOS_rootfs" and fields["root_fstype"] == "overlay"
    assert "rd.live.image" in fields["cmdline"]


def test_kis_boots_by_direct_kernel_boot(dracut):
    fields = boot(dracut / "server-dracut.kernel")   # any file of the set names the set
    assert fields["root_fstype"] == "overlay" and "root=live:" in fields["cmdline"]
