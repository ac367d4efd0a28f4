"""Architectures: names, an image's architecture read off its own binaries, what each changes in the boot
chain (loader name, GRUB platform, root partition type, console, qemu), tags and artifact names of an
--arch build, and the binfmt_misc check behind cross-building."""

from __future__ import annotations

import json

import pytest

from openos365 import arch as arches
from openos365 import boot, qemu
from openos365.build import arch_tag, for_arch, with_tag_suffix
from openos365.config import LayerConfig
from openos365.disk.grub import efi_modules
from openos365.disk.image import platforms
from openos365.disk.layout import plan
from openos365.errors import UserError
from openos365.imagetree import ImageTree

ARM64, AMD64 = arches.ARCHES["arm64"], arches.ARCHES["amd64"]


def elf(machine: int) -> bytes:
    return b"\x7fELF\x02\x01\x01" + bytes(11) + machine.to_bytes(2, "little") + bytes(44)


@pytest.mark.parametrize("name, expected", [("arm64", "arm64"), ("aarch64", "arm64"), ("linux/arm64", "arm64"),
                                            ("AMD64", "amd64"), ("x86_64", "amd64")])
def test_names(name, expected):
    assert arches.get(name).name == expected


def test_unknown_architecture_is_refused_with_the_choices():
    with pytest.raises(UserError) as exc:
        arches.get("riscv64")
    assert "riscv64" in exc.value.message and "arm64" in exc.value.hint


def test_architecture_read_off_the_images_own_init(tmp_path):
    (tmp_path / "usr/lib/systemd").mkdir(parents=True)
    (tmp_path / "usr/lib/systemd/systemd").write_bytes(elf(183))
    assert arches.of_tree(ImageTree(tmp_path)) is ARM64
    (tmp_path / "usr/lib/systemd/systemd").write_bytes(elf(62))
    assert arches.of_tree(ImageTree(tmp_path)) is AMD64


def test_a_link_out_of_the_tree_is_not_followed(tmp_path):
    host = tmp_path / "host-binary"
    host.write_bytes(elf(183))
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin/sh").symlink_to(host)          # absolute: resolved inside the tree, where it does not exist
    assert arches.of_tree(ImageTree(root)) is AMD64


def test_arm64_boots_uefi_only():
    assert ARM64.firmwares("both") == "uefi" and AMD64.firmwares("both") == "both"
    with pytest.raises(UserError, match="no PC BIOS"):
        ARM64.firmwares("bios")
    assert platforms("uefi", ARM64) == ["arm64-efi"]
    assert platforms("both", AMD64) == ["i386-pc", "x86_64-efi"]
    assert ARM64.efi_loader == "/EFI/BOOT/BOOTAA64.EFI" and AMD64.efi_loader == "/EFI/BOOT/BOOTX64.EFI"
    assert "serial" not in efi_modules(["serial", "linux"], ARM64) and "serial" in efi_modules(["serial"], AMD64)


def test_root_partition_type_is_the_architectures():
    ids = {n: f"00000000-0000-0000-0000-00000000000{i}" for i, n in enumerate(("disk", "bios", "esp", "root"))}
    layout = plan(content_bytes=100 << 20, inodes=1000, size=None, firmware="uefi", ids=ids, root_type=ARM64.root_type)
    assert [p.name for p in layout.partitions] == ["esp", "root"]
    assert layout.root.type_guid == "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"


def test_signed_chain_of_debian_arm64_lands_as_bootaa64(tmp_path):
    for rel in ("usr/lib/shim/shimaa64.efi.signed", "usr/lib/grub/arm64-efi-signed/grubaa64.efi.signed",
                "usr/lib/shim/mmaa64.efi.signed"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"MZ" + rel.encode())
    assert boot.find_signed_boot(tmp_path) is None      # an x86_64 image would need shimx64
    signed = boot.find_signed_boot(tmp_path, ARM64)
    assert signed is not None
    files = boot.signed_efi_files(tmp_path, signed, "chain", tmp_path / "work")
    assert files["/EFI/BOOT/BOOTAA64.EFI"].read_bytes().endswith(b"shimaa64.efi.signed")
    assert set(files) >= {"/EFI/BOOT/grubaa64.efi", "/EFI/BOOT/mmaa64.efi"}


def test_console_and_machine():
    assert boot.serial_console(ARM64).endswith("console=ttyAMA0,115200")
    argv = qemu.machine_args(ARM64, "tcg", False)
    assert argv[:3] == ["qemu-system-aarch64", "-machine", "virt"] and "cortex-a57" in argv
    assert qemu.machine_args(AMD64, "tcg", False)[:3] == ["qemu-system-x86_64", "-machine", "q35"]


def test_tags_and_names_of_an_arch_build(tmp_path):
    assert arch_tag("latest", "-arm64") == "arm64" and arch_tag("trixie", "-arm64") == "trixie-arm64"
    assert with_tag_suffix("localhost/openos365/debian:bookworm", "-arm64") == \
        "localhost/openos365/debian:bookworm-arm64"
    assert with_tag_suffix("127.0.0.1:5000/base", "-arm64") == "127.0.0.1:5000/base:arm64"
    root = LayerConfig(name="base", directory=tmp_path, image="localhost/openos365/base", tags=("latest",),
                       parent=None, base_image="localhost/openos365/debian:bookworm", bootstrap="debian-bookworm")
    child = LayerConfig(name="server", directory=tmp_path, image="localhost/openos365/server", tags=("latest",),
                        parent="base")
    built = for_arch([root, child], ARM64)
    assert built[0].base_image == "localhost/openos365/debian:bookworm-arm64"
    assert [layer.tags for layer in built] == [("arm64",), ("arm64",)]
    assert for_arch([root, child], AMD64) == [root, child]


def test_artifact_architecture_comes_from_the_manifest(tmp_path):
    disk = tmp_path / "server-arm64.qcow2"
    disk.write_bytes(b"")
    assert qemu.artifact_arch(disk) is AMD64                      # no manifest: amd64
    (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": {"server-arm64.qcow2": {
        "architecture": "arm64", "files": {"server-arm64.qcow2": {}}}}}))
    assert qemu.artifact_arch(disk) is ARM64


def test_binfmt_problems_are_named(tmp_path):
    assert "not mounted" in arches.emulation_problem(ARM64, tmp_path)
    (tmp_path / "status").write_text("enabled\n")
    assert "no qemu-user interpreter" in arches.emulation_problem(ARM64, tmp_path)
    (tmp_path / "qemu-aarch64").write_text("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n"
                                           "flags: P\n")
    assert "F flag" in arches.emulation_problem(ARM64, tmp_path)
    (tmp_path / "qemu-aarch64").write_text("enabled\ninterpreter x\nflags: PF\n")
    assert arches.emulation_problem(ARM64, tmp_path) is None


def test_docker_and_podman_build_for_a_platform(tmp_path):
    from openos365.engine import BuildRequest
    from openos365.engine.docker import Docker
    from openos365.engine.podman import Podman

    request = BuildRequest(containerfile=tmp_path / "Containerfile", context=tmp_path, tags=["x:arm64"],
                           platform="linux/arm64")
    assert "--platform=linux/arm64" in Podman()._build_argv(request, "iid", "chroot")
    assert "--platform=linux/arm64" in Docker()._build_argv(request, "iid")
