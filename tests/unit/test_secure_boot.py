"""Secure Boot: finding each distribution's signed chain in fake trees, the files put on the ESP, the
errors, and qemu's enforcing firmware. Boot tests prove the real thing (tests/boot)."""

from __future__ import annotations

from pathlib import Path

import pytest

from openos365 import boot, qemu
from openos365.disk import grub
from openos365.errors import UserError
from openos365.imagetree import ImageTree


def fake_tree(root: Path, files: dict[str, bytes], os_id: str = "debian") -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/os-release").write_text(f"ID={os_id}\n")
    return root


LAYOUTS = {
    "Debian": ({"usr/lib/shim/shimx64.efi.signed": b"shim", "usr/lib/shim/mmx64.efi.signed": b"mm",
                "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed": b"grub"}, "debian", "debian"),
    "Ubuntu": ({"usr/lib/shim/shimx64.efi.signed.latest": b"shim",
                "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed": b"grub"}, "ubuntu", "ubuntu"),
    "Fedora": ({"boot/efi/EFI/fedora/shimx64.efi": b"shim", "boot/efi/EFI/fedora/grubx64.efi": b"grub",
                "boot/efi/EFI/fedora/mmx64.efi": b"mm"}, "fedora", "fedora"),
    "openSUSE": ({"usr/share/efi/x86_64/shim.efi": b"shim", "usr/share/efi/x86_64/grub.efi": b"grub",
                  "usr/share/efi/x86_64/MokManager.efi": b"mm"}, "opensuse-leap", "opensuse"),
}


@pytest.mark.parametrize("distribution", list(LAYOUTS))
def test_each_distributions_signed_chain_is_found_and_put_where_shim_and_grub_look(tmp_path, distribution):
    files, os_id, vendor = LAYOUTS[distribution]
    tree = fake_tree(tmp_path / "tree", files, os_id)
    signed = boot.secure_boot_chain(tree, "auto", "both")
    assert signed is not None and signed.distribution == distribution and signed.vendor == vendor
    esp = boot.signed_efi_files(tree, signed, grub.chain_config(grub.search_by_uuid("1234")), tmp_path / "work")
    assert esp["/EFI/BOOT/BOOTX64.EFI"].read_bytes() == b"shim"
    assert esp["/EFI/BOOT/grubx64.efi"].read_bytes() == b"grub"
    assert ("/EFI/BOOT/mmx64.efi" in esp) == (b"mm" in files.values())
    config = esp[f"/EFI/{vendor}/grub.cfg"].read_text()
    assert esp["/EFI/BOOT/grub.cfg"].read_text() == config
    assert "search --no-floppy --fs-uuid --set=root 1234" in config and "configfile $prefix/grub.cfg" in config
    assert not any("fbx64" in path for path in esp)   # the fallback loader would rewrite the machine's NVRAM
    assert all(not path.is_symlink() and path.parent == tmp_path / "work" for path in esp.values())


def test_off_bios_and_a_tree_without_the_chain_use_grub_mkimage(tmp_path):
    files, _, _ = LAYOUTS["Debian"]
    tree = fake_tree(tmp_path / "tree", files)
    assert boot.secure_boot_chain(tree, "off", "both") is None
    assert boot.secure_boot_chain(tree, "on", "bios") is None
    bare = fake_tree(tmp_path / "bare", {"usr/bin/true": b""})
    assert boot.secure_boot_chain(bare, "auto", "uefi") is None


@pytest.mark.parametrize("os_id, packages", [("debian", "shim-signed grub-efi-amd64-signed"),
                                             ("fedora", "shim-x64 grub2-efi-x64")])
def test_on_without_the_chain_names_the_packages_to_add(tmp_path, os_id, packages):
    bare = fake_tree(tmp_path / "bare", {"usr/bin/true": b""}, os_id)
    with pytest.raises(UserError) as err:
        boot.secure_boot_chain(bare, "on", "both")
    assert "--secure-boot on" in err.value.message
    assert packages in (err.value.hint or "") and "--secure-boot off" in (err.value.hint or "")


def test_a_signed_binary_that_is_a_symlink_to_a_host_file_is_not_taken(tmp_path):
    host = tmp_path / "host-secret"
    host.write_bytes(b"host")
    tree = fake_tree(tmp_path / "tree", {"usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed": b"grub"})
    (tree / "usr/lib/shim").mkdir(parents=True)
    (tree / "usr/lib/shim/shimx64.efi.signed").symlink_to(host)
    assert boot.find_signed_boot(ImageTree(tree)) is None


def test_enforcing_firmware_needs_uefi_smm_and_a_secure_flash(tmp_path, monkeypatch):
    code, variables = tmp_path / "CODE.ms.fd", tmp_path / "VARS.ms.fd"
    code.write_bytes(b"c")
    variables.write_bytes(b"v")
    monkeypatch.setattr(qemu, "SECURE_OVMF_PAIRS", ((str(code), str(variables)),))
    args = qemu.firmware_args("uefi", tmp_path, secure_boot=True)
    assert "driver=cfi.pflash01,property=secure,value=on" in args
    assert any(str(code) in a for a in args) and (tmp_path / "OVMF_VARS.fd").read_bytes() == b"v"
    with pytest.raises(UserError, match="needs --firmware uefi"):
        qemu.firmware_args("bios", tmp_path, secure_boot=True)
    (tmp_path / "x.raw").write_bytes(bytes(512))
    argv, _ = qemu.qemu_argv(qemu.BootRequest(artifact=tmp_path / "x.raw", firmware="uefi", secure_boot=True),
                             tmp_path, "tcg")
    assert argv[argv.index("-machine") + 1] == "q35,smm=on"


@pytest.mark.parametrize("reported, ok", [("enabled", True), ("disabled", False), (None, False)])
def test_a_boot_with_secure_boot_off_in_the_guest_fails_the_test(reported, ok):
    fields = {"state": "running", "failed": ""} | ({"secure_boot": reported} if reported else {})
    problems = qemu.judge(fields, None, secure_boot=True)
    assert (problems == []) == ok
    assert qemu.judge(fields, None) == []
