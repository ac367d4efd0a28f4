import struct

import pytest

from openos365.boot import derive_uuid
from openos365.disk import grub
from openos365.disk.layout import ESP_SIZE, MIB, TYPE_ROOT_X86_64, plan, sfdisk_script
from openos365.errors import UserError

IDS = {n: derive_uuid("seed", n) for n in ("disk", "bios", "esp", "root")}


def test_layout_both_firmwares_root_last_and_aligned():
    layout = plan(content_bytes=800 * MIB, inodes=20000, size=None, firmware="both", ids=IDS)
    names = [p.name for p in layout.partitions]
    assert names == ["bios", "esp", "root"]
    assert layout.root.type_guid == TYPE_ROOT_X86_64
    for part in layout.partitions:
        assert part.start % MIB == 0 and part.size % MIB == 0
    ends = [p.start + p.size for p in layout.partitions]
    assert all(end <= nxt.start for end, nxt in zip(ends, layout.partitions[1:], strict=False))
    assert layout.root.start + layout.root.size <= layout.total - MIB  # room for the backup GPT
    assert layout.root.size >= 800 * MIB * 1.06


@pytest.mark.parametrize("firmware,names", [("bios", ["bios", "root"]), ("uefi", ["esp", "root"])])
def test_layout_single_firmware(firmware, names):
    layout = plan(content_bytes=100 * MIB, inodes=1000, size=None, firmware=firmware, ids=IDS)
    assert [p.name for p in layout.partitions] == names


def test_layout_explicit_size_is_used():
    layout = plan(content_bytes=100 * MIB, inodes=1000, size=4 << 30, firmware="both", ids=IDS)
    assert layout.total == 4 << 30
    assert layout.get("esp").size == ESP_SIZE


def test_layout_too_small_says_what_size_to_use():
    with pytest.raises(UserError, match="too small") as err:
        plan(content_bytes=900 * MIB, inodes=20000, size=512 * MIB, firmware="both", ids=IDS)
    assert "--size" in err.value.hint


def test_sfdisk_script_pins_every_id():
    layout = plan(content_bytes=100 * MIB, inodes=1000, size=None, firmware="both", ids=IDS)
    script = sfdisk_script(layout)
    assert f"label-id: {IDS['disk']}" in script
    for name in ("bios", "esp", "root"):
        assert f"uuid={IDS[name]}" in script
    assert script.startswith("label: gpt\n")


def test_derived_uuids_are_stable_and_distinct():
    assert derive_uuid("img", "root") == derive_uuid("img", "root")
    assert derive_uuid("img", "root") != derive_uuid("img", "esp")
    assert derive_uuid("img", "root") != derive_uuid("img2", "root")


def test_grub_config_has_serial_console_and_entry():
    cfg = grub.config([grub.MenuEntry("server", "/vmlinuz", "/initrd.img", "root=UUID=abc ro console=ttyS0")],
                      search=grub.search_by_uuid("abc"), timeout=1)
    assert "set timeout=1" in cfg
    assert "serial --unit=0 --speed=115200" in cfg
    assert "search --no-floppy --fs-uuid --set=root abc" in cfg
    assert "linux /vmlinuz root=UUID=abc ro console=ttyS0" in cfg
    assert "initrd /initrd.img" in cfg


def test_install_bios_patches_mbr_and_core(tmp_path):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 446 + b"P" * 64 + b"\x55\xaa" + b"\0" * (3 * MIB))  # keep the partition table
    core = tmp_path / "core.img"
    core.write_bytes(b"C" * 0x200 + b"D" * 4096)
    boot_img = tmp_path / "boot.img"
    boot_img.write_bytes(b"B" * 512)
    grub.install_bios(disk, core_img=core, boot_img=boot_img, core_lba=2048)
    data = disk.read_bytes()
    assert data[:0x5C] == b"B" * 0x5C
    assert struct.unpack("<Q", data[0x5C:0x64])[0] == 2048
    assert data[446:510] == b"P" * 64 and data[510:512] == b"\x55\xaa"
    assert struct.unpack("<Q", data[2048 * 512 + 0x1F4:2048 * 512 + 0x1FC])[0] == 2049
    assert data[2048 * 512 + 0x200:2048 * 512 + 0x210] == b"D" * 16


def test_install_bios_refuses_oversized_core(tmp_path):
    disk = tmp_path / "d"
    disk.write_bytes(b"\0" * 4096)
    core = tmp_path / "core.img"
    core.write_bytes(b"x" * (2 * MIB))
    (tmp_path / "boot.img").write_bytes(b"\0" * 512)
    with pytest.raises(ValueError, match="BIOS boot partition"):
        grub.install_bios(disk, core_img=core, boot_img=tmp_path / "boot.img", core_lba=2048)


def test_disk_compression_is_checked_before_any_work():
    from openos365.config import ExportOptions
    from openos365.exporters.disk import DiskExporter

    DiskExporter("qcow2").validate(ExportOptions(compression="zstd"))
    with pytest.raises(UserError, match="not available for qcow2"):
        DiskExporter("qcow2").validate(ExportOptions(compression="xz"))
    with pytest.raises(UserError, match="does not apply to --to raw"):
        DiskExporter("raw").validate(ExportOptions(compression="zstd"))


@pytest.mark.parametrize("name,host", [("server", "server"), ("my_image.v2", "my-image-v2"), ("__", "localhost")])
def test_default_host_name_is_valid(name, host):
    from openos365.boot import hostname_from

    assert hostname_from(name) == host


def test_bad_archives_are_user_errors(tmp_path):
    from openos365.rootfs import read_archive

    junk = tmp_path / "x.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(UserError, match="not a readable image archive"):
        read_archive(f"oci-archive:{junk}")
    (tmp_path / "layout").mkdir()
    with pytest.raises(UserError, match="'index.json' is missing"):
        read_archive(f"oci:{tmp_path / 'layout'}")
