"""--to iso and --to kis without root, podman or qemu: menus, argv building, options, errors, small files."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from openos365 import boot, qemu
from openos365.config import ExportOptions
from openos365.disk import filesystems
from openos365.errors import UserError
from openos365.exporters import EXPORTERS, ExportContext, iso, kis
from openos365.sources import Source

EPOCH = 1_700_000_000
NAME = "server"


def fake_tree(root: Path, *, os_id: str = "debian", live: str | None = "live-boot") -> Path:
    """Just enough of a root tree: os-release, a kernel and initrd, optionally live support."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text(f'PRETTY_NAME="Test"\nID={os_id}\n')
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/fstab").write_text("UUID=1234 / ext4 defaults 0 1\n")
    (root / "etc/repart.d").mkdir()
    (root / "etc/repart.d/50-root.conf").write_text("[Partition]\nType=root\n")
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "boot").mkdir()
    (root / "boot/vmlinuz-6.1.0-9-amd64").write_bytes(b"kernel")
    (root / "boot/initrd.img-6.1.0-9-amd64").write_bytes(b"initrd")
    if live == "live-boot":
        (root / "usr/lib/live/boot").mkdir(parents=True)
    elif live == "dmsquash-live":
        (root / "usr/lib/dracut/modules.d/90dmsquash-live").mkdir(parents=True)
    return root


def context(tmp_path: Path, tree: Path, **options) -> ExportContext:
    source = Source(spec="test", name=NAME, image_id="f" * 64, ref=None, tree=tree, epoch=EPOCH, config={},
                    layer=None, engine=None)
    out = tmp_path / "out"
    return ExportContext(source=source, options=ExportOptions(**options), outdir=out,
                         scratch=out / ".openos365-work-test")


def test_registered():
    assert isinstance(EXPORTERS["iso"], iso.IsoExporter)
    assert isinstance(EXPORTERS["kis"], kis.KisExporter)


# --- ISO -------------------------------------------------------------------------------------------------

def test_grub_cfg_live_boot_serial_and_screen_with_a_default_entry():
    cfg = iso.grub_cfg("live-boot", "OPENOS365", NAME, "quiet")
    assert "search --no-floppy --label --set=root OPENOS365" in cfg
    assert "set default=0" in cfg and f"set timeout={iso.GRUB_TIMEOUT}" in cfg
    assert "serial --unit=0 --speed=115200" in cfg and "terminal_output serial console" in cfg
    assert "linux /live/vmlinuz boot=live console=tty0 console=ttyS0,115200 quiet" in cfg
    assert "initrd /live/initrd.img" in cfg
    assert cfg.count("menuentry") == 2 and "quiet toram" in cfg
    assert "UUID" not in cfg


def test_grub_cfg_dracut_finds_the_medium_by_label():
    cfg = iso.grub_cfg("dmsquash-live", "MY_LIVE", NAME)
    assert "linux /LiveOS/vmlinuz root=live:CDLABEL=MY_LIVE rd.live.image rd.live.overlay.overlayfs=1" in cfg
    assert "initrd /LiveOS/initrd.img" in cfg and "rd.live.ram=1" in cfg


def test_xorriso_argv_makes_a_hybrid_bios_uefi_image(tmp_path):
    argv = iso.xorriso_argv(stage=tmp_path / "stage", output=tmp_path / "o.iso", squashfs=tmp_path / "r.sqfs",
                            squashfs_path="/live/filesystem.squashfs", efiboot=tmp_path / "efi.img",
                            mbr=tmp_path / "boot_hybrid.img", label="OPENOS365", publisher="ACME",
                            application="server (openos365)", epoch=EPOCH)
    text = " ".join(argv)
    assert argv[:3] == ["xorriso", "-as", "mkisofs"]
    assert argv[argv.index("-volid") + 1] == "OPENOS365" and argv[argv.index("-publisher") + 1] == "ACME"
    assert "--modification-date=2023111422132000" in argv
    assert "-eltorito-boot boot/grub/bios.img -no-emul-boot -boot-load-size 4 -boot-info-table" in text
    assert f"--grub2-mbr {tmp_path}/boot_hybrid.img" in text
    assert "-eltorito-alt-boot -e --interval:appended_partition_2:all:: -no-emul-boot" in text
    assert f"-append_partition 2 0xef {tmp_path}/efi.img -appended_part_as_gpt" in text
    assert argv[-2:] == [str(tmp_path / "stage"), f"/live/filesystem.squashfs={tmp_path}/r.sqfs"]


def test_iso_date_is_utc():
    assert iso.iso_date(0) == "1970010100000000"
    assert iso.iso_date(EPOCH) == "2023111422132000"


@pytest.mark.parametrize("compression, expected", [
    (None, ["-comp", "zstd", "-Xcompression-level", "9"]),
    ("zstd", ["-comp", "zstd", "-Xcompression-level", "9"]),
    ("xz", ["-comp", "xz"]),
    ("gzip", ["-comp", "gzip"]),
    ("none", ["-noI", "-noId", "-noD", "-noF", "-noX"]),
])
def test_squashfs_argv_pins_times_and_picks_compression(tmp_path, compression, expected):
    argv = filesystems.squashfs_argv(tmp_path / "t", tmp_path / "o", compression, EPOCH)
    assert argv[:3] == ["mksquashfs", str(tmp_path / "t"), str(tmp_path / "o")]
    assert "-noappend" in argv and " ".join(expected) in " ".join(argv)
    assert argv[-4:] == ["-mkfs-time", str(EPOCH), "-all-time", str(EPOCH)]


@pytest.mark.parametrize("os_id, wanted, unwanted", [
    ("debian", "live-boot", "dracut"),
    ("ubuntu", "live-boot", "dracut"),
    ("fedora", "dracut-live", "apt-get"),
    ("plan9", "live-boot", None),
])
def test_image_without_live_support_says_what_to_add(tmp_path, os_id, wanted, unwanted):
    tree = fake_tree(tmp_path / "tree", os_id=os_id, live=None)
    with pytest.raises(UserError, match="cannot boot live") as err:
        iso.live_kind(tree)
    assert wanted in err.value.hint
    if unwanted:
        assert unwanted not in err.value.hint
    if os_id == "plan9":
        assert "dracut-live" in err.value.hint


def test_live_kind_found(tmp_path):
    assert iso.live_kind(fake_tree(tmp_path / "a")) == "live-boot"
    assert iso.live_kind(fake_tree(tmp_path / "b", os_id="fedora", live="dmsquash-live")) == "dmsquash-live"


def test_iso_export_fails_before_any_work_without_live_support(tmp_path):
    ctx = context(tmp_path, fake_tree(tmp_path / "tree", live=None))
    with pytest.raises(UserError, match="cannot boot live"):
        iso.IsoExporter().export(ctx)
    assert not ctx.scratch.exists() and not (ctx.outdir / f"{NAME}.iso").exists()


def test_iso_plan_for_dry_run(tmp_path):
    ctx = context(tmp_path, Path("<flattened tree>"), label="DEMO", compression="xz")
    text = "\n".join(iso.IsoExporter().plan(ctx))
    assert "label DEMO" in text and "xz" in text and "GPT partition 2" in text and "server.iso" in text


def test_rootfs_other_than_squashfs_is_not_used_for_the_iso(capsys):
    iso.squashfs_only(ExportOptions(rootfs="erofs"))
    assert "applies to --to kis" in capsys.readouterr().err


def test_prepared_tree_has_no_identity_uuid_fstab_or_repart(tmp_path):
    ctx = context(tmp_path, fake_tree(tmp_path / "tree"), hostname="demo")
    prepared, user = boot.prepare_live_tree(ctx.source.tree, ctx.scratch_dir("tree"), name=ctx.name,
                                            options=ctx.options, epoch=ctx.source.epoch)
    tree = prepared.root
    assert user == {}
    fstab = (tree / "etc/fstab").read_text()
    assert "UUID" not in fstab and not any(line.split()[1:2] == ["/"] for line in fstab.splitlines()
                                            if line and not line.startswith("#"))
    assert not list((tree / "etc/repart.d").glob("*"))
    assert (tree / "etc/machine-id").read_text() == ""
    assert (tree / "etc/hostname").read_text() == "demo\n"
    assert (tree / "etc/fstab").stat().st_mtime == EPOCH
    assert (tmp_path / "tree/etc/repart.d/50-root.conf").exists()  # the source tree is never touched


@pytest.mark.skipif(not (shutil.which("mkfs.vfat") or Path("/usr/sbin/mkfs.vfat").exists())
                    or not shutil.which("mcopy"), reason="needs dosfstools and mtools")
def test_efi_boot_image_is_fat_and_reproducible(tmp_path):
    efi = tmp_path / "BOOTX64.EFI"
    efi.write_bytes(b"MZ" + bytes(1_500_000))
    first = iso.make_efiboot({"/EFI/BOOT/BOOTX64.EFI": efi}, tmp_path / "a.img", EPOCH)
    second = iso.make_efiboot({"/EFI/BOOT/BOOTX64.EFI": efi}, tmp_path / "b.img", EPOCH)
    data = first.read_bytes()
    assert len(data) % (1 << 20) == 0 and len(data) >= 2 << 20
    assert data[510:512] == b"\x55\xaa" and b"EFIBOOT" in data[:90]
    assert hashlib.sha256(data).digest() == hashlib.sha256(second.read_bytes()).digest()


# --- KIS -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rootfs, live, expected", [
    ("squashfs", "live-boot", "boot=live plainroot root=/dev/vda console=tty0 console=ttyS0,115200"),
    ("erofs", "live-boot", "boot=live plainroot root=/dev/vda console=tty0 console=ttyS0,115200"),
    ("ext4", "live-boot", "root=UUID=U rootfstype=ext4 rw console=tty0 console=ttyS0,115200"),
    ("squashfs", "dmsquash-live", "root=live:/dev/vda rd.live.image rd.live.overlay.overlayfs=1 console=tty0"),
    ("squashfs", None, "root=/dev/vda rootfstype=squashfs ro console=tty0"),
    ("erofs", None, "root=UUID=U rootfstype=erofs ro console=tty0"),
])
def test_kis_kernel_cmdline(rootfs, live, expected):
    assert kis.kernel_cmdline(rootfs, live, "U").startswith(expected)
    assert kis.kernel_cmdline(rootfs, live, "U", "quiet").endswith(" quiet")


def test_netboot_fetches_squashfs_over_http_only_when_the_initrd_can():
    line, fetched = kis.netboot_cmdline(NAME, "squashfs", "live-boot", "LOCAL", "${base-url}")
    assert fetched and line.startswith("boot=live fetch=${base-url}/server.squashfs console=tty0")
    line, fetched = kis.netboot_cmdline(NAME, "squashfs", "dmsquash-live", "LOCAL", "http://h/x")
    assert fetched and line.startswith("root=live:http://h/x/server.squashfs rd.live.image")
    assert kis.netboot_cmdline(NAME, "ext4", "live-boot", "LOCAL", "u") == ("LOCAL", False)
    assert kis.netboot_cmdline(NAME, "squashfs", None, "LOCAL", "u") == ("LOCAL", False)


def test_ipxe_script():
    script = kis.ipxe_script(NAME, "boot=live fetch=${base-url}/server.squashfs", True, "squashfs")
    lines = [line for line in script.splitlines() if line and not line.startswith("#")]
    assert script.startswith("#!ipxe\n")
    assert lines == [
        "isset ${base-url} || set base-url http://${next-server}/openos365",
        "kernel ${base-url}/server.kernel initrd=server.initrd boot=live fetch=${base-url}/server.squashfs",
        "initrd ${base-url}/server.initrd",
        "boot",
    ]
    assert "must already be on a disk" in kis.ipxe_script(NAME, "root=UUID=x", False, "ext4")


def test_grub_netboot_entry():
    cfg = kis.grub_netboot_cfg(NAME, "boot=live fetch=${kis_url}/server.squashfs", True, "squashfs")
    assert 'menuentry "server (openos365, network)" {' in cfg
    assert "  linux ${kis_dir}/server.kernel boot=live fetch=${kis_url}/server.squashfs\n" in cfg
    assert "  initrd ${kis_dir}/server.initrd\n" in cfg
    assert 'if [ -z "$kis_url" ]; then set kis_url=http://${net_default_server}/openos365; fi' in cfg
    assert cfg.rstrip().endswith("}")


def test_kis_options():
    with pytest.raises(UserError, match="not available for an erofs root") as err:
        kis.check_options(ExportOptions(rootfs="erofs", compression="zstd"))
    assert "--rootfs squashfs" in err.value.hint
    kis.check_options(ExportOptions(rootfs="erofs", compression="none"))
    kis.check_options(ExportOptions(rootfs="squashfs", compression="xz"))
    with pytest.raises(UserError, match="export.rootfs"):
        ExportOptions().merged({"rootfs": "btrfs"})
    with pytest.raises(UserError, match="export.label"):
        ExportOptions().merged({"label": "lower case"})


def test_kis_ext4_warns_that_compression_does_not_apply(capsys):
    kis.check_options(ExportOptions(rootfs="ext4", compression="xz"))
    assert "does not apply to an ext4 root" in capsys.readouterr().err


def test_kis_required_tools_follow_the_root_type():
    exporter = kis.KisExporter()
    assert exporter.required_tools(ExportOptions()) == ["cp", "mksquashfs"]
    assert exporter.required_tools(ExportOptions(rootfs="ext4")) == ["cp", "mkfs.ext4"]
    assert exporter.required_tools(ExportOptions(rootfs="erofs")) == ["cp", "mkfs.erofs"]


def test_erofs_argv_pins_time_and_uuid(tmp_path):
    argv = kis.erofs_argv(tmp_path / "t", tmp_path / "o", None, "U", EPOCH)
    assert argv == ["mkfs.erofs", "-zlz4hc", "-T", str(EPOCH), "-U", "U", str(tmp_path / "o"), str(tmp_path / "t")]
    assert "-zlz4hc" not in kis.erofs_argv(tmp_path / "t", tmp_path / "o", "none", "U", EPOCH)


def test_ext4_size(tmp_path):
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "f").write_bytes(bytes(10 << 20))
    size = kis.ext4_size(tree, None)
    assert size % kis.MIB == 0 and size >= (10 << 20) + kis.EXT4_HEADROOM
    assert kis.ext4_size(tree, 500 * kis.MIB + 1) == 501 * kis.MIB
    with pytest.raises(UserError, match="too small") as err:
        kis.ext4_size(tree, 20 * kis.MIB)
    assert "--size" in err.value.hint


def test_kis_plan(tmp_path):
    ctx = context(tmp_path, Path("<flattened tree>"), rootfs="erofs")
    text = "\n".join(kis.KisExporter().plan(ctx))
    assert "mkfs.erofs (lz4hc)" in text and "server.erofs" in text and "server.append" in text


def test_stale_root_images_of_the_same_set_are_removed(tmp_path):
    for name in ("server.squashfs", "server.squashfs.sha256", "server.ext4", "other.squashfs"):
        (tmp_path / name).write_text("x")
    kis.remove_stale_roots(tmp_path, NAME, "ext4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.squashfs", "server.ext4"]


# --- what `openos365 test` does with these artifacts --------------------------------------------------

def kis_set(directory: Path, name: str, root_suffix: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for suffix in (".append", ".kernel", ".initrd", root_suffix):
        (directory / f"{name}{suffix}").write_text("root=/dev/vda\n" if suffix == ".append" else "x")
    return directory


def test_kis_names_with_dots(tmp_path):
    files = qemu.kis_files(kis_set(tmp_path, "server.v2", ".squashfs"))
    assert files["kernel"].name == "server.v2.kernel" and files["rootfs"].name == "server.v2.squashfs"


@pytest.mark.parametrize("suffix, access", [(".squashfs", "readonly=on"), (".erofs", "readonly=on"),
                                            (".ext4", "snapshot=on")])
def test_kis_boot_drive_is_never_written(tmp_path, suffix, access):
    req = qemu.BootRequest(artifact=kis_set(tmp_path / "k", "s", suffix), workdir=tmp_path)
    argv, mode = qemu.medium_args(req, tmp_path)
    assert mode == "kis" and argv[argv.index("-append") + 1] == "root=/dev/vda"
    assert argv[-1].endswith(f"s{suffix},format=raw,if=virtio,{access}")


@pytest.mark.parametrize("medium, needle", [("cdrom", "media=cdrom"), ("usb", "usb-storage"),
                                            ("disk", "if=virtio")])
def test_iso_media(tmp_path, medium, needle):
    image = tmp_path / "s.iso"
    image.write_bytes(b"")
    argv, mode = qemu.medium_args(qemu.BootRequest(artifact=image, medium=medium, workdir=tmp_path), tmp_path)
    assert mode == f"iso-{medium}" and needle in " ".join(argv)


def test_an_install_medium_boots_the_installer_by_default_and_keeps_a_live_entry():
    config = iso.grub_cfg("live-boot", "OPENOS365", "server",
                          install="openos365.stay openos365.install=install/server.raw.zst")
    titles = [line for line in config.splitlines() if line.startswith("menuentry")]
    assert titles[0].startswith('menuentry "Install server to this machine\'s disk"') and len(titles) == 2
    first, second = config.split("menuentry")[1:3]
    assert "openos365.install=install/server.raw.zst" in first and "boot=live" in first
    assert "openos365.install" not in second and "set default=0" in config


def test_install_iso_needs_the_disk_tools_too():
    from openos365.config import ExportOptions
    from openos365.exporters import EXPORTERS

    needed = EXPORTERS["install-iso"].required_tools(ExportOptions())
    assert {"xorriso", "mksquashfs", "sfdisk", "mkfs.ext4", "zstd"} <= set(needed)
    assert "zstd" not in EXPORTERS["iso"].required_tools(ExportOptions())
