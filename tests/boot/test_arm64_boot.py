"""--arch arm64 on an x86_64 host: the base bootstrapped and every layer built through qemu-user (binfmt_misc),
then the disk (UEFI only, BOOTAA64.EFI through Debian's signed shim, arm64 root partition type), the live ISO
and KIS booted under qemu-system-aarch64 (virt, AAVMF, TCG).

Marked `arm64` (`-m "not arm64"` leaves them out). Building the layers under emulation takes about 15 minutes,
mostly on one core: conftest starts that build when the run begins, so it overlaps the amd64 tests, and runs
these tests last."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openos365.qemu import BootRequest, boot_test
from tests.conftest import REPO, cli

pytestmark = [pytest.mark.boot, pytest.mark.arm64]
GIB = 1 << 30


@pytest.fixture(scope="module")
def arm64(arm64_server: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("arm64")
    cli("export", "--to", "qcow2,iso,kis", "layers/server", "--arch", "arm64", "-o", str(out))
    return out


def boot(artifact: Path, **kwargs) -> dict[str, str]:
    report = boot_test(BootRequest(artifact=artifact, workdir=REPO / ".openos365", timeout=900, **kwargs))
    assert report.mode.endswith("uefi") or report.mode.startswith("kis"), report.mode
    fields = report.fields
    assert fields["state"] == "running" and fields["failed"] == "", fields
    assert "console=ttyAMA0" in fields["cmdline"], fields   # arm64's serial console, so an arm64 kernel
    return fields


def test_manifest_says_arm64_and_names_carry_it(arm64):
    manifest = json.loads((arm64 / "manifest.json").read_text())["artifacts"]
    assert set(manifest) == {"server-arm64.qcow2", "server-arm64.iso", "server-arm64.kis"}
    assert {entry["architecture"] for entry in manifest.values()} == {"arm64"}
    assert {entry["image_ref"].rsplit(":", 1)[1] for entry in manifest.values()} == {"arm64"}
    disk = manifest["server-arm64.qcow2"]["disk"]
    assert disk["firmware"] == "uefi" and [p["name"] for p in disk["partitions"]] == ["esp", "root"]
    assert disk["partitions"][-1]["type"] == "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"
    assert any(p.startswith("linux-image-arm64=") for p in manifest["server-arm64.qcow2"]["packages"])


def test_disk_boots_under_uefi_and_grows(arm64):
    fields = boot(arm64 / "server-arm64.qcow2", grow=GIB)
    assert int(fields["root_fs_size"]) > GIB


def test_iso_boots_from_a_usb_stick(arm64):
    fields = boot(arm64 / "server-arm64.iso", medium="usb")
    assert fields["root_fstype"] == "overlay"


def test_kis_boots_by_direct_kernel_boot(arm64):
    fields = boot(arm64 / "server-arm64.kernel")
    assert fields["root_fstype"] == "overlay" and "boot=live" in fields["cmdline"]
