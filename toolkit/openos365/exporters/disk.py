"""--to raw|qcow2|vmdk|vhdx|vhd: a GPT disk that boots under BIOS and UEFI and grows on first boot.

No loop devices, no mounts: sfdisk on a file, mkfs.ext4 -d and mkfs.vfat at partition offsets, mtools,
GRUB images written into place. Every id is derived from the image id, every time from
SOURCE_DATE_EPOCH, so the same image and options give the same bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import boot, log, tools
from ..artifacts import atomic_path
from ..disk import grub
from ..disk.filesystems import fat_copy, mkfs_ext4, mkfs_vfat
from ..disk.layout import Layout, plan, write_partition_table
from ..errors import UserError
from ..imagetree import ImageTree
from ..rootfs import clamp_mtimes, copy_tree
from ..runner import run
from .base import ExportContext, Exporter


@dataclass(frozen=True)
class DiskFormat:
    extension: str
    qemu_format: str | None      # None: the raw image is the artifact
    qemu_options: tuple[str, ...] = ()
    note: str = ""


DISK_FORMATS: dict[str, DiskFormat] = {
    "raw": DiskFormat("raw", None, note="plain disk image"),
    "qcow2": DiskFormat("qcow2", "qcow2", note="QEMU/KVM, OpenStack"),
    "vmdk": DiskFormat("vmdk", "vmdk", ("-o", "subformat=streamOptimized"), "VMware, OVA (stream-optimised)"),
    "vhdx": DiskFormat("vhdx", "vhdx", ("-o", "subformat=dynamic"), "Hyper-V (dynamic)"),
    "vhd": DiskFormat("vhd", "vpc", ("-o", "subformat=fixed,force_size=on"), "Azure (fixed, 1 MiB aligned)"),
}
QCOW2_COMPRESSION = {"zstd": ("-c", "-o", "compression_type=zstd"), "gzip": ("-c",), "none": (), None: ()}


class DiskExporter(Exporter):
    tools = ("cp", "sfdisk", "mkfs.ext4", "mkfs.vfat", "mcopy", "grub-mkimage")

    def __init__(self, fmt: str):
        self.name = fmt
        self.format = DISK_FORMATS[fmt]
        self.description = f"bootable GPT disk, BIOS + UEFI, grows on first boot ({self.format.note})"

    def required_tools(self, options: Any) -> list[str]:
        return [*self.tools, *(["qemu-img"] if self.format.qemu_format else [])]

    def validate(self, options: Any) -> None:
        if options.compression is None:
            return
        if self.name != "qcow2":
            raise UserError(f"--compression does not apply to --to {self.name}",
                            hint="only qcow2 compresses (zstd or gzip); compress raw disks with zstd or xz afterwards")
        if options.compression not in QCOW2_COMPRESSION:
            raise UserError(f"--compression {options.compression} is not available for qcow2",
                            hint="use zstd (qemu >= 5.1 to read it), gzip (zlib, any qemu) or none")

    def plan(self, ctx: ExportContext) -> list[str]:
        fw = ctx.options.firmware
        steps = [
            "copy the tree; write fstab (root by UUID, x-systemd.growfs), /etc/repart.d (grow root), hostname, "
            "empty machine-id, no SSH host keys" + (f", user {ctx.options.user}" if ctx.options.user else ""),
            "write GRUB modules and grub.cfg into /boot/grub (serial + screen console)",
            f"lay out a GPT ({'BIOS boot, ' if fw != 'uefi' else ''}{'ESP, ' if fw != 'bios' else ''}root last) "
            "on a sparse file with sfdisk",
            "mkfs.ext4 -d the tree straight into the root partition",
        ]
        if fw != "bios":
            steps.append("mkfs.vfat the ESP and copy into it with mtools: the image's signed shim (as BOOTX64.EFI) "
                         "and GRUB with a grub.cfg that finds the root (Secure Boot; --secure-boot "
                         f"{ctx.options.secure_boot}), else GRUB's own BOOTX64.EFI")
        if fw != "uefi":
            steps.append("write GRUB core.img into the BIOS boot partition and boot.img into the MBR")
        if self.format.qemu_format:
            steps.append(f"qemu-img convert to {self.name} {' '.join(self.format.qemu_options)}".rstrip())
        steps.append(f"rename to {ctx.outdir / (ctx.name + '.' + self.format.extension)}, write .sha256 and "
                     "manifest.json")
        return steps

    def export(self, ctx: ExportContext) -> tuple[list[Path], dict[str, Any]]:
        if not tools.reproducible_ext4():
            log.warn("e2fsprogs < 1.47.1: the disk will boot but is not byte-reproducible "
                     "(Debian 12: apt-get install -t bookworm-backports e2fsprogs)")
        raw, layout, details = build_raw_disk(ctx)
        final = ctx.outdir / f"{ctx.name}.{self.format.extension}"
        with atomic_path(final) as temp:
            if self.format.qemu_format is None:
                os.replace(raw, temp)
            else:
                with log.step(f"Converting to {self.name}"):
                    extra = QCOW2_COMPRESSION[ctx.options.compression] if self.name == "qcow2" else ()
                    run(["qemu-img", "convert", "-f", "raw", "-O", self.format.qemu_format,
                         *self.format.qemu_options, *extra, str(raw), str(temp)], step=f"convert to {self.name}",
                        capture=True)
        return [final], {"disk": {"format": self.name, "virtual_size": layout.total,
                                  "partitions": layout.describe(), **details}}


def build_raw_disk(ctx: ExportContext) -> tuple[Path, Layout, dict[str, Any]]:
    """The raw disk in the scratch directory; the layout; manifest details."""
    source, options = ctx.source, ctx.options
    epoch = source.epoch
    seed = f"{source.image_id}:{ctx.name}"
    ids = {name: boot.derive_uuid(seed, name) for name in ("disk", "bios", "esp", "root", "rootfs")}
    kernel = boot.find_kernel(source.tree)
    signed = boot.secure_boot_chain(source.tree, options.secure_boot, options.firmware)
    modules_dir = ctx.scratch_dir("grub-modules")
    grub_dirs = {p: boot.grub_modules(source.tree, p, modules_dir) for p in platforms(options.firmware)}
    tree_dir = ctx.scratch_dir("tree")
    tree = ImageTree(tree_dir, "the disk's tree")
    with log.step("Preparing the root tree"):
        copy_tree(source.tree, tree_dir, link_files=True)  # every change below replaces files, never edits them
        cmdline = " ".join(filter(None, [f"root=UUID={ids['rootfs']} ro", boot.SERIAL_CONSOLE,
                                         options.kernel_cmdline]))
        user = prepare_disk_tree(tree, ctx, kernel, ids["rootfs"], cmdline, grub_dirs)
    with log.step("Sizing the disk"):
        content, inodes = boot.tree_size(tree)
        layout = plan(content_bytes=content, inodes=inodes, size=options.size, firmware=options.firmware, ids=ids)
        log.info(f"{log.human_size(layout.total)} disk, root {log.human_size(layout.root.size)} "
                 f"for {log.human_size(content)} of files")
    image = ctx.scratch / "disk.raw"
    with log.step("Writing the disk"):
        with open(image, "wb") as fh:
            fh.truncate(layout.total)
        write_partition_table(str(image), layout)
        mkfs_ext4(image, offset=layout.root.start, size=layout.root.size, tree=tree_dir, uuid=ids["rootfs"],
                  label="root", epoch=epoch)
        install_bootloaders(image, layout, grub_dirs, ctx, ids["rootfs"], signed)
    secure = {"secure_boot": f"{signed.distribution}'s signed shim and GRUB" if signed else False} \
        if options.firmware != "bios" else {}
    return image, layout, {"firmware": options.firmware, "root_fs_uuid": ids["rootfs"], "kernel": kernel.version,
                           "kernel_cmdline": cmdline, **secure, **user}


def prepare_disk_tree(tree: ImageTree, ctx: ExportContext, kernel: boot.Kernel, root_uuid: str, cmdline: str,
                      grub_dirs: dict[str, Path]) -> dict[str, Any]:
    options, epoch = ctx.options, ctx.source.epoch
    boot.clear_identity(tree, epoch)
    boot.set_hostname(tree, options.hostname or boot.hostname_from(ctx.name), epoch)
    boot.set_resolver(tree)
    user = boot.add_user(tree, options.user, options.ssh_key, epoch)
    tree.write("etc/fstab", f"# written by openos365\nUUID={root_uuid} / ext4 defaults,x-systemd.growfs 0 1\n",
               mtime=epoch)
    if boot.has_repart(tree):
        tree.write("etc/repart.d/50-openos365-root.conf",
                   "# grow the root partition (last on the disk) to fill the disk on first boot\n"
                   "[Partition]\nType=root-x86-64\n", mtime=epoch)
    else:
        log.warn("the image has no systemd-repart: the root partition will not grow on first boot "
                 "(add systemd >= 245 with systemd-repart, or cloud-initramfs-growroot, to the layer)")
    tree.mkdir("boot/grub")   # replaces an image's boot/grub symlink: it must not lead anywhere else
    for platform, modules in grub_dirs.items():
        tree.remove(f"boot/grub/{platform}")
        tree.copy_dir_in(modules, f"boot/grub/{platform}")
    entry = grub.MenuEntry(
        title=ctx.name,
        kernel=f"/{kernel.kernel_link or kernel.kernel}",
        initrd=f"/{kernel.initrd_link or kernel.initrd}",
        cmdline=cmdline)
    tree.write("boot/grub/grub.cfg", grub.config([entry], search=grub.search_by_uuid(root_uuid), timeout=1),
               mtime=epoch)
    clamp_mtimes(tree.root, epoch)
    return user


def platforms(firmware: str) -> list[str]:
    return [p for p, fw in (("i386-pc", "bios"), ("x86_64-efi", "uefi")) if firmware in (fw, "both")]


def install_bootloaders(image: Path, layout: Layout, grub_dirs: dict[str, Path], ctx: ExportContext,
                        root_uuid: str, signed: boot.SignedBoot | None) -> None:
    """GRUB images made from the module copies (never from paths inside the image tree); for UEFI with
    Secure Boot, the image's own signed shim and GRUB instead."""
    work = ctx.scratch_dir("grub")
    early = grub.early_config(grub.search_by_uuid(root_uuid), work / "early.cfg")
    esp = layout.get("esp")
    if esp is not None:
        if signed is not None:
            files = boot.signed_efi_files(ctx.source.tree, signed, grub.chain_config(grub.search_by_uuid(root_uuid)),
                                          work / "signed")
        else:
            files = {"/EFI/BOOT/BOOTX64.EFI": grub.mkimage(fmt="x86_64-efi", module_dir=grub_dirs["x86_64-efi"],
                                                           early_cfg=early, output=work / "BOOTX64.EFI",
                                                           modules=grub.DISK_EFI_MODULES)}
        mkfs_vfat(image, offset=esp.start, size=esp.size, label="ESP")
        fat_copy(image, esp.start, files, ctx.source.epoch)
    bios = layout.get("bios")
    if bios is not None:
        core = grub.mkimage(fmt="i386-pc", module_dir=grub_dirs["i386-pc"], early_cfg=early,
                            output=work / "core.img", modules=grub.DISK_BIOS_MODULES)
        grub.install_bios(image, core_img=core, boot_img=grub_dirs["i386-pc"] / "boot.img",
                          core_lba=bios.start_sector)
