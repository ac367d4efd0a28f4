"""--arch arm64 on an x86_64 host: the base bootstrapped and every layer built through qemu-user (binfmt_misc),
then the disk (UEFI only, BOOTAA64.EFI through Debian's signed shim, arm64 root partition type, enforcing Secure
Boot), the live ISO, the install ISO and KIS booted under qemu-system-aarch64 (virt, AAVMF, TCG); the WSL
tarball checked for arm64 binaries.

Marked `arm64` (`-m "not arm64"` leaves them out). Building the layers under emulation takes about 15 minutes,
mostly on one core: conftest starts that build when the run begins, so it overlaps the amd64 tests, and runs
these tests last."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openos365.qemu import BootRequest, boot_test
from tests.conftest import REPO, cli
from tests.integration.wsl_support import TarTree, check_wsl_rules

pytestmark = [pytest.mark.boot, pytest.mark.arm64]
GIB = 1 << 30


@pytest.fixture(scope="module")
def arm64(arm64_server: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("arm64")
    cli("export", "--to", "qcow2,iso,kis", "layers/server", "--arch", "arm64", "-o", str(out))
    return out


def boot(artifact: Path, **kwargs) -> dict[str, str]:
    report = boot_test(BootRequest(artifact=artifact, workdir=REPO / ".openos365", timeout=900, **kwargs))
    assert "uefi" in report.mode.split(", ") or report.mode.startswith("kis"), report.mode
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


def test_disk_boots_under_enforcing_secure_boot_and_grows(arm64):
    """AAVMF with Microsoft's keys (AAVMF_CODE.ms.fd): Debian's signed shimaa64 and GRUB, then the kernel."""
    fields = boot(arm64 / "server-arm64.qcow2", grow=GIB, secure_boot=True)
    assert fields["secure_boot"] == "enabled"
    assert int(fields["root_fs_size"]) > GIB


def test_an_unsigned_boot_loader_is_refused_by_the_enforcing_firmware(arm64_server, tmp_path):
    """Proves AAVMF enforces: the same image with grub-mkimage's unsigned BOOTAA64.EFI does not start."""
    from openos365.errors import BootTestError

    cli("export", "--to", "raw", "layers/server", "--arch", "arm64", "--secure-boot", "off", "-o", str(tmp_path))
    with pytest.raises(BootTestError) as err:
        boot_test(BootRequest(artifact=tmp_path / "server-arm64.raw", workdir=REPO / ".openos365", timeout=300,
                              secure_boot=True))
    message = str(err.value)
    assert message.startswith("Secure Boot verification failed") and "Access Denied" in message
    assert "Linux version" not in message


def test_iso_boots_from_a_usb_stick(arm64):
    fields = boot(arm64 / "server-arm64.iso", medium="usb")
    assert fields["root_fstype"] == "overlay"


def test_kis_boots_by_direct_kernel_boot(arm64):
    fields = boot(arm64 / "server-arm64.kernel")
    assert fields["root_fstype"] == "overlay" and "boot=live" in fields["cmdline"]


def test_wsl_tarball_is_arm64_and_follows_the_rules(arm64_server, tmp_path):
    """For WSL on Windows on Arm: the same rules as amd64's, with /bin/sh, /bin/bash and /sbin/init arm64."""
    cli("export", "--to", "wsl", "layers/server", "--arch", "arm64", "-o", str(tmp_path))
    manifest = json.loads((tmp_path / "manifest.json").read_text())["artifacts"]
    assert {entry["architecture"] for entry in manifest.values()} == {"arm64"}
    check_wsl_rules(TarTree(tmp_path / "server-arm64.wsl.tar.gz"), "server-arm64", arch="arm64")



def test_install_iso_installs_then_the_disk_boots_under_secure_boot_and_grows(arm64_server, tmp_path):
    """The OEM install ISO on arm64: booted from a CD with a blank disk, it writes the disk and powers off;
    the disk then boots alone and grows. Its installer takes the console from ttyAMA0's login prompt."""
    cli("export", "--to", "install-iso", "layers/server", "--arch", "arm64", "--unattended", "-o", str(tmp_path))
    report = boot_test(BootRequest(artifact=tmp_path / "server-arm64.install.iso", workdir=REPO / ".openos365",
                                   timeout=1500, install_onto=4 * GIB, secure_boot=True))
    installed = report.earlier[0]
    assert installed["result"] == "installed" and installed["target"] == "/dev/vda"
    fields = report.fields
    assert fields["state"] == "running" and fields["failed"] == "" and "console=ttyAMA0" in fields["cmdline"]
    assert fields["root_source"] == "/dev/vda2" and fields["secure_boot"] == "enabled"
    assert int(fields["disk_size"]) == 4 * GIB and int(fields["root_fs_size"]) >= 0.9 * 4 * GIB
