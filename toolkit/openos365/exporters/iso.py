"""--to iso: a hybrid live ISO that boots as a CD and as a USB stick, under BIOS and UEFI.

The root tree goes into a squashfs; the image's own initrd boots it live with a writable overlay in RAM
(Debian live-boot: /live/filesystem.squashfs + boot=live; dracut dmsquash-live: /LiveOS/squashfs.img +
root=live:CDLABEL=). GRUB images are made by grub-mkimage (deterministic; grub-mkrescue and
grub-mkstandalone are not): i386-pc-eltorito for BIOS El Torito, x86_64-efi in a small FAT image that is
both the UEFI El Torito image and GPT partition 2 (type EF00), and GRUB's boot_hybrid.img as the MBR so
the file written raw to a USB stick boots too. No loop devices, no mounts: mksquashfs, mkfs.vfat + mtools,
xorriso. Times come from SOURCE_DATE_EPOCH, so the same image and options give the same bytes.
"""

from __future__ import annotations

import os
import shutil
import time
from importlib import resources
from pathlib import Path
from typing import Any

from .. import arch as arches
from .. import boot, customize, log
from ..artifacts import atomic_path, sha256_of
from ..disk import grub
from ..disk.filesystems import fat_copy, make_squashfs, mkfs_vfat
from ..disk.image import build_raw_disk
from ..errors import UserError
from ..imagetree import ImageTree
from ..runner import run
from .base import ExportContext, Exporter

# where each live initrd looks for the kernel, the initrd and the root image on the medium
LIVE_LAYOUT = {
    "live-boot": ("live", "filesystem.squashfs"),
    "dmsquash-live": ("LiveOS", "squashfs.img"),
}
GRUB_TIMEOUT = 3
EFI_MODULES = [*grub.LIVE_MODULES, "efi_gop"]
BIOS_MODULES = [*grub.LIVE_MODULES, "biosdisk"]


# --- what the image must bring --------------------------------------------------------------------------

def live_kind(tree: Path) -> str:
    """live-boot or dmsquash-live; a UserError saying what to add to the layer when the image has neither."""
    kind = boot.live_support(tree)
    if kind is not None:
        return kind
    family = os_family(tree)
    debian = ("add live-boot to the layer (Debian/Ubuntu: `apt-get install live-boot`; the package rebuilds "
              "the initrd)")
    dracut = ("add dracut's dmsquash-live module to the layer (Fedora: `dnf install dracut-live`, then "
              "`add_dracutmodules+=\" dmsquash-live \"` in /etc/dracut.conf.d/ and rebuild the initrd with "
              "`dracut --regenerate-all -f`)")
    hint = debian if family == "debian" else dracut if family == "dracut" else f"{debian}; or {dracut}"
    raise UserError("the image cannot boot live: its initrd has neither Debian's live-boot nor dracut's "
                    "dmsquash-live (openos365 does not patch an image's initrd)", hint=hint)


def os_family(tree: Path) -> str | None:
    """'debian' (live-boot) or 'dracut' (Fedora and friends) from os-release ID/ID_LIKE; None if unknown."""
    fields = boot.os_release(tree)
    words = set(fields.get("ID", "").split()) | set(fields.get("ID_LIKE", "").split())
    if words & {"debian", "ubuntu"}:
        return "debian"
    if words & {"fedora", "rhel", "centos", "suse", "opensuse", "arch"}:
        return "dracut"
    return None


def squashfs_only(options: Any) -> None:
    if options.rootfs != "squashfs":
        log.warn(f"--rootfs {options.rootfs} applies to --to kis; a live ISO's root image is squashfs "
                 "(what live-boot and dmsquash-live read)")


# --- boot menus ---------------------------------------------------------------------------------------

def live_cmdline(kind: str, label: str, extra: str = "", arch: arches.Arch | None = None) -> str:
    live = "boot=live" if kind == "live-boot" else f"root=live:CDLABEL={label} rd.live.image " \
                                                    "rd.live.overlay.overlayfs=1"
    return " ".join(filter(None, [live, boot.serial_console(arch), extra]))


def grub_cfg(kind: str, label: str, title: str, extra: str = "", install: str | None = None,
             arch: arches.Arch | None = None) -> str:
    """Two entries: the default (boots on its own after GRUB_TIMEOUT s) and one that copies the root to RAM.
    An install medium's default entry runs the installer with `install` (its kernel parameters) instead."""
    directory = LIVE_LAYOUT[kind][0]
    to_ram = "toram" if kind == "live-boot" else "rd.live.ram=1"
    kernel, initrd = f"/{directory}/vmlinuz", f"/{directory}/initrd.img"
    cmdline = live_cmdline(kind, label, extra, arch)
    entries = [grub.MenuEntry(f"{title} (live)", kernel, initrd, cmdline),
               grub.MenuEntry(f"{title} (live, copied to RAM)", kernel, initrd, f"{cmdline} {to_ram}")]
    if install is not None:
        entries = [grub.MenuEntry(f"Install {title} to this machine's disk", kernel, initrd,
                                  f"{cmdline} {install}"), entries[0]]
    return grub.config(entries, search=grub.search_by_label(label), timeout=GRUB_TIMEOUT)


# --- staging, EFI image, xorriso -----------------------------------------------------------------------

def touch_all(path: Path, epoch: int) -> None:
    """Every file and directory under path gets the epoch as its time (the ISO records them)."""
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            os.utime(os.path.join(dirpath, name), (epoch, epoch), follow_symlinks=False)
    os.utime(path, (epoch, epoch))


def stage_medium(ctx: ExportContext, tree: ImageTree, kernel: boot.Kernel, kind: str, early: Path,
                 grub_dirs: dict[str, Path], install: str | None = None, arch: arches.Arch | None = None) -> Path:
    """The ISO's files: kernel and initrd where the live initrd looks, GRUB's config, modules, BIOS image
    (PCs only)."""
    stage = ctx.scratch_dir("stage")
    directory = stage / LIVE_LAYOUT[kind][0]
    directory.mkdir()
    tree.copy_out(str(kernel.kernel), directory / "vmlinuz")
    tree.copy_out(str(kernel.initrd), directory / "initrd.img")
    grub_dir = stage / "boot/grub"
    grub_dir.mkdir(parents=True)
    options = ctx.options
    (grub_dir / "grub.cfg").write_text(grub_cfg(kind, options.label, ctx.name, options.kernel_cmdline, install,
                                                arch))
    for platform, source in grub_dirs.items():  # for `insmod` in GRUB's shell; the images embed what boots
        (grub_dir / platform).mkdir()
        for module in sorted([*source.glob("*.mod"), *source.glob("*.lst")]):
            shutil.copyfile(module, grub_dir / platform / module.name)
    if "i386-pc" in grub_dirs:
        grub.mkimage(fmt="i386-pc-eltorito", module_dir=grub_dirs["i386-pc"], early_cfg=early,
                     output=grub_dir / "bios.img", modules=BIOS_MODULES)
    touch_all(stage, ctx.source.epoch)
    return stage


def add_efi_configs(stage: Path, files: dict[str, Path], epoch: int) -> None:
    """The EFI image's grub.cfg files in the ISO file system too, at the same paths. From a CD, Debian 13's
    signed GRUB (2.12) takes the whole disc, not the El Torito image it was loaded from, as its device, and
    looks for its built-in prefix there: (cd0)/EFI/debian/grub.cfg."""
    for esp_path, source in files.items():
        if esp_path.endswith("/grub.cfg"):
            target = stage / esp_path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    touch_all(stage, epoch)


def make_efiboot(files: dict[str, Path], output: Path, epoch: int) -> Path:
    """A FAT image holding \\EFI\\BOOT\\BOOTX64.EFI (and, for Secure Boot, the rest of the signed chain):
    the UEFI El Torito image and GPT partition 2."""
    mib = 1 << 20
    wanted = sum(path.stat().st_size for path in files.values()) * 5 // 4 + mib // 2   # FAT tables, slack
    size = max(2 * mib, -(-wanted // mib) * mib)
    with open(output, "wb") as fh:
        fh.truncate(size)
    mkfs_vfat(output, offset=0, size=size, label="EFIBOOT", fat32=False)
    fat_copy(output, 0, files, epoch)
    os.utime(output, (epoch, epoch))
    return output


def iso_date(epoch: int) -> str:
    """xorriso's --modification-date: YYYYMMDDhhmmsscc (UTC). GRUB reads it as the ISO's UUID."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(epoch)) + "00"


def xorriso_argv(*, stage: Path, output: Path, squashfs: Path, squashfs_path: str, efiboot: Path, mbr: Path | None,
                 label: str, publisher: str, application: str, epoch: int,
                 extra: dict[str, Path] | None = None) -> list[str]:
    """mbr: GRUB's hybrid MBR for PCs (BIOS boot from CD and USB stick); None for UEFI-only architectures."""
    # BIOS, CD: El Torito no-emulation image; BIOS, USB stick: GRUB's hybrid MBR loads the same image
    bios = ["-eltorito-boot", "boot/grub/bios.img", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
            "--grub2-boot-info", "--grub2-mbr", str(mbr), "--mbr-force-bootable"] if mbr else []
    return [
        "xorriso", "-as", "mkisofs", "-iso-level", "3", "-full-iso9660-filenames", "-joliet", "-joliet-long",
        "-rational-rock", "-volid", label, "-publisher", publisher, "-appid", application,
        "-preparer", "openos365", "--modification-date=" + iso_date(epoch), "-output", str(output),
        *bios, "-eltorito-catalog", "boot/grub/boot.cat",
        # UEFI, CD: El Torito EFI image = the appended FAT; UEFI, USB stick: the same FAT as GPT partition 2
        *(["-eltorito-alt-boot"] if mbr else []), "-e", "--interval:appended_partition_2:all::", "-no-emul-boot",
        "-append_partition", "2", "0xef", str(efiboot), "-appended_part_as_gpt",
        "-graft-points", str(stage), f"{squashfs_path}={squashfs}",
        *(f"{iso_path}={host}" for iso_path, host in sorted((extra or {}).items())),
    ]


# --- the exporter -------------------------------------------------------------------------------------

class IsoExporter(Exporter):
    """--to iso, and --to install-iso: the same live medium carrying the disk (as --to raw makes it),
    which its default boot entry writes to the machine's disk."""

    tools = ("cp", "mksquashfs", "grub-mkimage", "mkfs.vfat", "mcopy", "xorriso")
    customizes = True

    def __init__(self, install: bool = False):
        self.install = install
        self.name = "install-iso" if install else "iso"
        self.description = ("OEM install ISO (CD or USB stick, BIOS and UEFI): writes the disk image to the "
                            "machine's disk, verifies it, powers off" if install else
                            "hybrid live ISO: boots as CD or USB stick, BIOS and UEFI, root in RAM overlay")

    def required_tools(self, options: Any) -> list[str]:
        disk = ["sfdisk", "mkfs.ext4", "zstd"] if self.install else []
        return [*self.tools, *disk]

    def plan(self, ctx: ExportContext) -> list[str]:
        options = ctx.options
        steps = [
            "check the image can boot live (live-boot or dracut dmsquash-live in its initrd)",
        ]
        if self.install:
            steps += [
                "make the disk as --to raw does (GPT, BIOS + UEFI, grows on first boot); zstd-compress it, "
                "with its sha256 and size, for /install on the medium",
                "add the installer (/usr/libexec/openos365/install and its unit) to the live tree; default "
                "boot entry: install" + (", unattended" if options.unattended else ", after a confirmation"),
            ]
        steps += [
            f"copy the tree; hostname {options.hostname or ctx.name}, empty machine-id, no SSH host keys, "
            "fstab without a root entry, no /etc/repart.d" + customize.summary(options),
            f"mksquashfs the tree ({options.compression or 'zstd level 9'}, times pinned to SOURCE_DATE_EPOCH)",
            f"stage the kernel, initrd and grub.cfg (label {options.label}, serial + screen console, "
            f"default entry after {GRUB_TIMEOUT}s); grub-mkimage i386-pc-eltorito and x86_64-efi",
            "mkfs.vfat a small EFI boot image and copy into it with mtools the image's signed shim (as "
            f"BOOTX64.EFI), GRUB and a grub.cfg that finds the ISO (--secure-boot {options.secure_boot}), "
            "else GRUB's own BOOTX64.EFI",
            "xorriso: El Torito BIOS + UEFI, GRUB hybrid MBR, EFI image appended as GPT partition 2",
            f"rename to {ctx.outdir / (ctx.name + self._suffix)}, write .sha256 and manifest.json",
        ]
        return steps

    @property
    def _suffix(self) -> str:
        return ".install.iso" if self.install else ".iso"

    def export(self, ctx: ExportContext) -> tuple[list[Path], dict[str, Any]]:
        options, epoch = ctx.options, ctx.source.epoch
        squashfs_only(options)
        kernel = boot.find_kernel(ctx.source.tree)
        kind = live_kind(ctx.source.tree)
        target = arches.of_tree(ImageTree(ctx.source.tree))
        signed = boot.secure_boot_chain(ctx.source.tree, options.secure_boot, "uefi", target)
        payload, install_args, installed = disk_payload(ctx) if self.install else ({}, None, {})
        with log.step("Preparing the live root tree"):
            tree, user = boot.prepare_live_tree(ctx.source.tree, ctx.scratch_dir("tree"), name=ctx.name,
                                                options=options, epoch=epoch)
            if self.install:
                add_installer(tree, epoch)
        squashfs = make_squashfs(tree.root, ctx.scratch / "root.squashfs", options.compression, epoch)
        os.utime(squashfs, (epoch, epoch))
        with log.step("Writing the boot loaders"):
            work = ctx.scratch_dir("grub")
            platforms = ["i386-pc"] if target.bios else []
            grub_dirs = {p: boot.grub_modules(tree, p, work) for p in [*platforms, target.efi_platform]}
            early = grub.early_config(grub.search_by_label(options.label), work / "early.cfg")
            stage = stage_medium(ctx, tree, kernel, kind, early, grub_dirs, install_args, target)
            files = boot.uefi_loader_files(tree, signed, search=grub.search_by_label(options.label),
                                           module_dir=grub_dirs[target.efi_platform], early_cfg=early,
                                           modules=EFI_MODULES, work=work, arch=target)
            efiboot = make_efiboot(files, work / "efiboot.img", epoch)
            add_efi_configs(stage, files, epoch)
        directory, image_name = LIVE_LAYOUT[kind]
        final = ctx.outdir / f"{ctx.name}{self._suffix}"
        with log.step("Writing the ISO (xorriso)"), atomic_path(final) as temp:
            argv = xorriso_argv(stage=stage, output=temp, squashfs=squashfs, squashfs_path=f"/{directory}/"
                                f"{image_name}", efiboot=efiboot,
                                mbr=grub_dirs["i386-pc"] / "boot_hybrid.img" if target.bios else None,
                                label=options.label, publisher=options.publisher,
                                application=f"{ctx.name} (openos365)", epoch=epoch, extra=payload)
            run(argv, step="xorriso", capture=True, env={"SOURCE_DATE_EPOCH": str(epoch)})
        return [final], {"iso": {
            "label": options.label, "live": kind, "kernel": kernel.version,
            "kernel_cmdline": live_cmdline(kind, options.label, options.kernel_cmdline, target),
            "root_image": f"/{directory}/{image_name}", "compression": options.compression or "zstd",
            "squashfs_size": squashfs.stat().st_size,
            "secure_boot": f"{signed.distribution}'s signed shim and GRUB" if signed else False,
            "boots": (["bios-cdrom", "uefi-cdrom", "bios-usb (hybrid MBR)", "uefi-usb (GPT partition 2)"]
                      if target.bios else ["uefi-cdrom", "uefi-usb (GPT partition 2)"]),
            **installed, **user}}


INSTALLER = "usr/libexec/openos365/install"
INSTALLER_UNIT = "etc/systemd/system/openos365-install.service"


def disk_payload(ctx: ExportContext) -> tuple[dict[str, Path], str, dict[str, Any]]:
    """The disk as --to raw makes it, zstd-compressed (single-threaded: the same bytes on any machine), and
    a file with its sha256 and size: ISO path -> host file, the installer's kernel parameters, details."""
    raw, layout, details = build_raw_disk(ctx)
    with log.step("Compressing the disk image"):
        digest = sha256_of(raw)
        packed = ctx.scratch / f"{ctx.name}.raw.zst"
        run(["zstd", "-q", "-3", "--single-thread", "-o", str(packed), str(raw)], step="zstd the disk image",
            capture=True)
        raw.unlink()
    info = ctx.scratch / f"{ctx.name}.raw.zst.info"
    info.write_text(f"sha256={digest}\nsize={layout.total}\n")
    for path in (packed, info):
        os.utime(path, (ctx.source.epoch,) * 2)
    rel = f"install/{ctx.name}.raw.zst"
    args = " ".join(["openos365.stay", f"openos365.install={rel}",
                     *(["openos365.install.unattended"] if ctx.options.unattended else [])])
    return ({f"/{rel}": packed, f"/{rel}.info": info}, args,
            {"install": {"disk_image": f"/{rel}", "raw_sha256": digest, "raw_size": layout.total,
                         "compressed_size": packed.stat().st_size, "unattended": ctx.options.unattended,
                         "disk": {"virtual_size": layout.total, "partitions": layout.describe(), **details}}})


def add_installer(tree: ImageTree, epoch: int) -> None:
    """The installer and its unit, written into the live tree (never into the image)."""
    data = resources.files("openos365").joinpath("data", "install")
    tree.write(INSTALLER, data.joinpath("openos365-install").read_text(), mode=0o755, mtime=epoch)
    tree.write(INSTALLER_UNIT, data.joinpath("openos365-install.service").read_text(), mtime=epoch)
    tree.symlink("etc/systemd/system/multi-user.target.wants/openos365-install.service",
                 "/etc/systemd/system/openos365-install.service")
