"""The bootable raw disk, built in the export's scratch directory: a GPT with BIOS boot, ESP and root
partitions, the root filesystem made from a customised copy of the tree, GRUB (or the image's signed shim
and GRUB) written into place. `--to raw|qcow2|...` publish or convert it; `--to install-iso` carries it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import arch as arches
from .. import boot, customize, log
from ..imagetree import ImageTree
from ..rootfs import clamp_mtimes, copy_tree
from . import grub
from .filesystems import fat_copy, mkfs_ext4, mkfs_vfat
from .layout import Layout, plan, write_partition_table

if TYPE_CHECKING:   # the exporters' package imports this module
    from ..exporters.base import ExportContext


def build_raw_disk(ctx: ExportContext) -> tuple[Path, Layout, dict[str, Any]]:
    """The raw disk in the scratch directory; the layout; manifest details."""
    source, options = ctx.source, ctx.options
    epoch = source.epoch
    seed = f"{source.image_id}:{ctx.name}"
    ids = {name: boot.derive_uuid(seed, name) for name in ("disk", "bios", "esp", "root", "rootfs")}
    kernel = boot.find_kernel(source.tree)
    target = arches.of_tree(ImageTree(source.tree))
    firmware = target.firmwares(options.firmware)
    signed = boot.secure_boot_chain(source.tree, options.secure_boot, firmware, target)
    modules_dir = ctx.scratch_dir("grub-modules")
    grub_dirs = {p: boot.grub_modules(source.tree, p, modules_dir) for p in platforms(firmware, target)}
    tree_dir = ctx.scratch_dir("tree")
    tree = ImageTree(tree_dir, "the disk's tree")
    with log.step("Preparing the root tree"):
        copy_tree(source.tree, tree_dir, link_files=True)  # every change below replaces files, never edits them
        cmdline = " ".join(filter(None, [f"root=UUID={ids['rootfs']} ro", boot.serial_console(target),
                                         options.kernel_cmdline]))
        user = prepare_disk_tree(tree, ctx, kernel, ids["rootfs"], cmdline, grub_dirs, target)
    with log.step("Sizing the disk"):
        content, inodes = boot.tree_size(tree)
        layout = plan(content_bytes=content, inodes=inodes, size=options.size, firmware=firmware, ids=ids,
                      root_type=target.root_type)
        log.info(f"{log.human_size(layout.total)} disk, root {log.human_size(layout.root.size)} "
                 f"for {log.human_size(content)} of files")
    image = ctx.scratch / "disk.raw"
    with log.step("Writing the disk"):
        with open(image, "wb") as fh:
            fh.truncate(layout.total)
        write_partition_table(str(image), layout)
        mkfs_ext4(image, offset=layout.root.start, size=layout.root.size, tree=tree_dir, uuid=ids["rootfs"],
                  label="root", epoch=epoch)
        install_bootloaders(image, layout, grub_dirs, ctx, ids["rootfs"], signed, target)
    secure = {"secure_boot": f"{signed.distribution}'s signed shim and GRUB" if signed else False} \
        if firmware != "bios" else {}
    return image, layout, {"firmware": firmware, "root_fs_uuid": ids["rootfs"], "kernel": kernel.version,
                           "kernel_cmdline": cmdline, **secure, **user}


def prepare_disk_tree(tree: ImageTree, ctx: ExportContext, kernel: boot.Kernel, root_uuid: str, cmdline: str,
                      grub_dirs: dict[str, Path], target: arches.Arch = arches.ARCHES["amd64"]) -> dict[str, Any]:
    options, epoch = ctx.options, ctx.source.epoch
    boot.clear_identity(tree, epoch)
    boot.set_hostname(tree, options.hostname or boot.hostname_from(ctx.name), epoch)
    boot.set_resolver(tree)
    user = customize.apply(tree, options, epoch)
    tree.write("etc/fstab", f"# written by openos365\nUUID={root_uuid} / ext4 defaults,x-systemd.growfs 0 1\n",
               mtime=epoch)
    if boot.has_repart(tree):
        tree.write("etc/repart.d/50-openos365-root.conf",
                   "# grow the root partition (last on the disk) to fill the disk on first boot\n"
                   f"[Partition]\nType={target.repart_type}\n", mtime=epoch)
    else:
        log.warn("the image has no systemd-repart: the root partition will not grow on first boot "
                 "(add systemd >= 245 with systemd-repart, or cloud-initramfs-growroot, to the layer)")
    tree.mkdir("boot/grub")   # replaces an image's boot/grub symlink: it must not lead anywhere else
    for platform, modules in grub_dirs.items():
        tree.remove(f"boot/grub/{platform}")
        tree.copy_dir_in(modules, f"boot/grub/{platform}")
    tree.write("boot/grub/grub.cfg", grub_cfg(ctx.name, kernel, cmdline, root_uuid), mtime=epoch)
    clamp_mtimes(tree.root, epoch)
    return user


def grub_cfg(name: str, kernel: boot.Kernel, cmdline: str, root_uuid: str) -> str:
    """One entry with the paths the image's kernel packages keep up to date (Debian's /vmlinuz, openSUSE's
    /boot/vmlinuz, Arch's /boot/vmlinuz-linux); without such paths, the newest kernel found at boot time and
    the exported one as the fallback entry."""
    search = grub.search_by_uuid(root_uuid)
    if kernel.survives_upgrades:
        entry = grub.MenuEntry(name, f"/{kernel.kernel_link}", f"/{kernel.initrd_link}", cmdline)
        return grub.config([entry], search=search, timeout=1)
    exported = grub.MenuEntry(f"{name} (kernel {kernel.version}, as exported)", f"/{kernel.kernel}",
                              f"/{kernel.initrd}", cmdline)
    return grub.discovery_config(name, exported, search=search, timeout=1)


def platforms(firmware: str, target: arches.Arch = arches.ARCHES["amd64"]) -> list[str]:
    """GRUB's platforms for the firmware kinds: BIOS (PCs only) and the architecture's UEFI."""
    return [p for p, fw in (("i386-pc", "bios"), (target.efi_platform, "uefi")) if firmware in (fw, "both")]


def install_bootloaders(image: Path, layout: Layout, grub_dirs: dict[str, Path], ctx: ExportContext,
                        root_uuid: str, signed: boot.SignedBoot | None,
                        target: arches.Arch = arches.ARCHES["amd64"]) -> None:
    """GRUB images made from the module copies (never from paths inside the image tree); for UEFI with
    Secure Boot, the image's own signed shim and GRUB instead."""
    work = ctx.scratch_dir("grub")
    early = grub.early_config(grub.search_by_uuid(root_uuid), work / "early.cfg")
    esp = layout.get("esp")
    if esp is not None:
        files = boot.uefi_loader_files(ctx.source.tree, signed, search=grub.search_by_uuid(root_uuid),
                                       module_dir=grub_dirs[target.efi_platform], early_cfg=early,
                                       modules=grub.DISK_EFI_MODULES, work=work, arch=target)
        mkfs_vfat(image, offset=esp.start, size=esp.size, label="ESP")
        fat_copy(image, esp.start, files, ctx.source.epoch)
    bios = layout.get("bios")
    if bios is not None:
        core = grub.mkimage(fmt="i386-pc", module_dir=grub_dirs["i386-pc"], early_cfg=early,
                            output=work / "core.img", modules=grub.DISK_BIOS_MODULES)
        grub.install_bios(image, core_img=core, boot_img=grub_dirs["i386-pc"] / "boot.img",
                          core_lba=bios.start_sector)
