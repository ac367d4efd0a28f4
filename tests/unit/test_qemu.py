import pytest

from openos365 import qemu
from openos365.errors import UserError

REPORT = """noise
OPENOS365-BOOT-CHECK
state=running
failed=
root_source=/dev/vda3
root_fstype=ext4
root_fs_size=3900000000
root_part_size=4030000000
disk_size=4100000000
END
"""


def test_parse_report_waits_for_end():
    assert qemu.parse_report("OPENOS365-BOOT-CHECK\nstate=running\n") is None
    fields = qemu.parse_report(REPORT)
    assert fields["state"] == "running" and fields["root_source"] == "/dev/vda3"


def test_judge_good_and_bad():
    fields = qemu.parse_report(REPORT)
    assert qemu.judge(fields, grow=None) == []
    assert qemu.judge(fields, grow=2 << 30) == []
    bad = {**fields, "state": "degraded", "failed": "systemd-repart.service"}
    problems = qemu.judge(bad, grow=None)
    assert any("degraded" in p for p in problems) and any("systemd-repart" in p for p in problems)
    small = {**fields, "root_fs_size": "1700000000"}
    assert any("did not grow" in p for p in qemu.judge(small, grow=2 << 30))


def test_growth_is_judged_by_partition_and_filesystem():
    """A 2.6 GiB disk grown by 1 GiB: partition to the end, ext4 96 % of it (df) is a good growth."""
    disk = 2_754_609_152
    grown = {"disk_size": str(disk), "root_part_size": str(disk - 67 * 2**20), "root_fs_size": "2577000000"}
    assert qemu.growth_problems(grown) == []
    assert "partition" in qemu.growth_problems({**grown, "root_part_size": "1500000000"})[0]
    assert "with the partition" in qemu.growth_problems({**grown, "root_fs_size": "1400000000"})[0]


def test_kis_files_need_every_piece(tmp_path):
    with pytest.raises(UserError, match="no \\*.append"):
        qemu.kis_files(tmp_path)
    (tmp_path / "s.append").write_text("root=/dev/vda")
    with pytest.raises(UserError, match="s.kernel is missing"):
        qemu.kis_files(tmp_path)
    (tmp_path / "s.kernel").write_text("k")
    (tmp_path / "s.initrd").write_text("i")
    with pytest.raises(UserError, match="root image"):
        qemu.kis_files(tmp_path)
    (tmp_path / "s.squashfs").write_text("r")
    assert qemu.kis_files(tmp_path)["rootfs"].name == "s.squashfs"


def test_uefi_needs_ovmf_pair(tmp_path, monkeypatch):
    monkeypatch.setattr(qemu, "OVMF_PAIRS", (("/nonexistent/code", "/nonexistent/vars"),))
    with pytest.raises(UserError, match="no OVMF firmware") as err:
        qemu.firmware_args("uefi", tmp_path)
    assert "ovmf" in err.value.hint
    assert qemu.firmware_args("bios", tmp_path) == []


def test_missing_artifact(tmp_path):
    req = qemu.BootRequest(artifact=tmp_path / "nope.qcow2", workdir=tmp_path)
    with pytest.raises(UserError, match="no such artifact"):
        qemu.medium_args(req, tmp_path)


def test_a_started_boot_check_is_waited_for_past_the_login_prompt():
    """The login-prompt fallback is for images without the unit: one whose unit started, or whose report has
    begun, is waited for until its END (or the timeout)."""
    prompt = "Debian GNU/Linux 12 desktop ttyS0\n\ndesktop login: "
    assert not qemu.has_unit(prompt, "")
    assert qemu.has_unit("[  OK  ] Started openos365-boot-check.service - openos365 boot check.\n" + prompt, "")
    assert qemu.has_unit(prompt, "OPENOS365-BOOT-CHECK\nstate=running\n")


GRUB_SHELL = ("BdsDxe: starting Boot0001 \"UEFI QEMU DVD-ROM QM00011 \" from PciRoot(0x0)/Pci(0x1F,0x2)\r\n"
              "\x1b[02;25HGNU GRUB  version 2.12-9+deb13u4\r\n\r\n   Minimal BASH-like line editing is supported.\r\n"
              "\r\n\r\ngrub> \x1b[10;07H")


@pytest.mark.parametrize("console, stuck", [
    (GRUB_SHELL, "GRUB stopped at its shell"),
    ("error: file `/boot/grub/i386-pc/normal.mod' not found.\r\nEntering rescue mode...\r\ngrub rescue> ",
     "GRUB stopped at its shell"),
    ("BdsDxe: failed to load Boot0001\r\nPress ESC in 1 seconds to skip startup.nsh\r\nShell> ", "UEFI shell"),
    ("Welcome to GRUB!\r\n\x1b[0m  Booting `server'\r\nLoading Linux 6.12.57+deb13-amd64 ...\r\n", None),
    ("[  OK  ] Reached target grub> lookalike.\r\nDebian GNU/Linux 13 server ttyS0\r\nserver login: ", None),
    ("", None),
])
def test_a_boot_stuck_at_a_boot_loader_or_firmware_prompt_is_named(console, stuck):
    found = qemu.stuck_at_prompt(console)
    assert (found is None) if stuck is None else (stuck in found)


def test_a_tcg_boot_that_panics_is_tried_with_one_tcg_thread():
    argv = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-name", "tcg"]
    assert qemu.with_one_tcg_thread(argv) == ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg,thread=single",
                                              "-name", "tcg"]
    oops = "[    2.340590] Kernel panic - not syncing: Fatal exception in interrupt\n"
    assert qemu.kernel_panicked(oops) and not qemu.kernel_panicked("[  OK  ] Started panic-free.service\n")


AAVMF_REFUSAL = ("UEFI firmware (version  built at 13:10:49 on Nov  5 2024)\r\n\x1b[2J\x1b[01;01H"
                 "BdsDxe: loading Boot0001 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x4,0x0)\r\n"
                 "BdsDxe: failed to load Boot0001 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x4,0x0): "
                 "Access Denied\r\n"
                 "\r\n>>Start PXE over IPv4.\r\n")
SHIM_REFUSAL = ("BdsDxe: starting Boot0001 \"UEFI QEMU HARDDISK QM00001 \"\r\n"
                "Verification failed: (0x1A) Security Violation\r\nFailed to load image: Security Violation\r\n")
BOOTED = ("BdsDxe: starting Boot0001 \"UEFI Misc Device\"\r\nEFI stub: Booting Linux Kernel...\r\n"
          "[    0.000000] Linux version 6.12.57+deb13-arm64\r\n"
          "[   12.100000] sshd[512]: error: Access Denied for user nobody\r\n")


@pytest.mark.parametrize("console, refused", [
    (AAVMF_REFUSAL, "Access Denied"),
    (SHIM_REFUSAL, "Security Violation"),
    (BOOTED, None),   # the words, logged by a booted system, are not the firmware's
    ("", None),
])
def test_a_loader_refused_by_secure_boot_is_named_before_any_kernel_starts(console, refused):
    found = qemu.refused_by_firmware(console)
    assert (found is None) if refused is None else (refused in found and found.startswith(("BdsDxe", "Verif")))


def test_an_installer_unit_that_failed_without_its_own_report_is_seen():
    live = "OPENOS365-BOOT-CHECK\nstate=degraded\nfailed=openos365-install.service \nroot_fstype=overlay\nEND\n"
    assert qemu.installer_unit_failed(live)
    assert not qemu.installer_unit_failed(live.replace("openos365-install.service", "ssh.service"))
    assert not qemu.installer_unit_failed(live.replace("END\n", ""))      # not whole yet
    assert not qemu.installer_unit_failed("")
