"""The OEM install ISO: booted with blank disks, it writes the disk image to the machine's disk, verifies it
and powers off; the installed disk then boots alone and grows to fill it. An ambiguous target is refused.

Each install takes about three minutes under TCG (the whole disk is written and read back).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from openos365.errors import BootTestError
from openos365.qemu import BootRequest, boot_test
from tests.conftest import REPO, cli

pytestmark = pytest.mark.boot
GIB = 1 << 30


@pytest.fixture(scope="module")
def install_iso(server_image, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("install")
    cli("export", "--to", "install-iso", "layers/server", "-o", str(out), "--unattended")
    return out / "server.install.iso"


def install(iso: Path, **kwargs):
    return boot_test(BootRequest(artifact=iso, workdir=REPO / ".openos365", timeout=1500, install_onto=4 * GIB,
                                 **kwargs))


def test_the_medium_carries_the_same_disk_as_a_raw_export(install_iso, tmp_path):
    import json

    raw = tmp_path / "raw"
    cli("export", "--to", "raw", "layers/server", "-o", str(raw))
    manifest = json.loads((install_iso.parent / "manifest.json").read_text())["artifacts"]["server.install-iso"]
    carried = manifest["iso"]["install"]
    assert carried["raw_sha256"] == (raw / "server.raw.sha256").read_text().split()[0]
    assert carried["raw_size"] == (raw / "server.raw").stat().st_size
    assert carried["unattended"] is True and carried["compressed_size"] < carried["raw_size"] // 2


@pytest.mark.parametrize("firmware, secure_boot", [("bios", False), ("uefi", True)],
                         ids=["bios", "uefi-secure-boot"])
def test_installs_unattended_then_the_disk_boots_alone_and_grows(install_iso, firmware, secure_boot):
    report = install(install_iso, firmware=firmware, secure_boot=secure_boot)
    installed = report.earlier[0]
    assert installed["result"] == "installed" and installed["target"] == "/dev/vda"   # not the CD it booted from
    fields = report.fields
    assert fields["state"] == "running" and fields["failed"] == ""
    assert fields["root_source"] == "/dev/vda3" and "boot=live" not in fields["cmdline"]
    assert int(fields["disk_size"]) == 4 * GIB and int(fields["root_fs_size"]) >= 0.9 * 4 * GIB
    assert fields["secure_boot"] == ("enabled" if secure_boot else "bios")


def test_two_blank_disks_and_none_named_is_refused(install_iso):
    with pytest.raises(BootTestError) as err:
        install(install_iso, firmware="bios", install_disks=2)
    message = str(err.value)
    assert "the installer stopped: several disks could be the target: vda vdb" in message
    assert "openos365.install.device=" in message          # the console says how to name one
