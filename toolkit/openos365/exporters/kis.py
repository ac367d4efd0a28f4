"""--to kis: kernel + initrd + root filesystem image, for custom and network deployment.

Writes NAME.kernel, NAME.initrd, NAME.<squashfs|ext4|erofs>, NAME.append (the kernel command line that
boots the set with the root image attached as the first virtio disk, as `openos365 test DIR` does), and
two network-boot snippets: NAME.ipxe (iPXE script) and NAME.grub-netboot.cfg (GRUB menu entry).

Default root image: squashfs. It is the smallest (zstd), quick to make, reproducible, and on an image with
live-boot (layers/server) or dmsquash-live it boots with a writable overlay in RAM, from a disk or fetched
over HTTP by the initrd: the same root serves a local disk and a network boot. ext4 gives a persistent,
writable root; erofs a read-only one (its module must be in the initrd; live-boot mounts it with the
`plainroot` option). Every file is written under a temporary name and renamed when complete; NAME.append
comes last, so a set with an .append file is complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import arch as arches
from .. import boot, customize, log, tools
from ..arch import Arch
from ..artifacts import atomic_path
from ..disk.filesystems import make_squashfs, mkfs_ext4
from ..errors import UserError
from ..imagetree import ImageTree
from ..runner import run
from .base import ExportContext, Exporter

ROOT_DEVICE = "/dev/vda"           # the first virtio disk: where `openos365 test` attaches the root image
ROOT_TOOLS = {"squashfs": "mksquashfs", "ext4": "mkfs.ext4", "erofs": "mkfs.erofs"}
# erofs-utils 1.5 (Debian 12) and Linux 6.1 compress erofs with lz4/lz4hc only
EROFS_COMPRESSION: dict[str | None, list[str]] = {None: ["-zlz4hc"], "none": []}
MIB = 1 << 20
EXT4_HEADROOM = 256 * MIB


# --- options and command lines ----------------------------------------------------------------------------

def check_options(options: Any) -> None:
    if options.rootfs == "erofs" and options.compression not in EROFS_COMPRESSION:
        raise UserError(f"--compression {options.compression} is not available for an erofs root "
                        "(erofs-utils 1.5 and Linux 6.1 support lz4 only)",
                        hint="leave --compression unset (lz4hc) or use --compression none; for zstd or xz "
                        "use --rootfs squashfs")
    if options.rootfs == "ext4" and options.compression not in (None, "none"):
        log.warn(f"--compression {options.compression} does not apply to an ext4 root image (it is stored "
                 "uncompressed); use --rootfs squashfs for a compressed root")


def kernel_cmdline(rootfs: str, live: str | None, fs_uuid: str, extra: str = "", device: str = ROOT_DEVICE,
                   arch: Arch | None = None) -> str:
    """The command line that boots the root image attached as `device`."""
    if rootfs == "ext4":
        base = f"root=UUID={fs_uuid} rootfstype=ext4 rw"
    elif live == "live-boot":
        # live-boot mounts the read-only root image as the lower layer of an overlay in RAM
        base = f"boot=live plainroot root={device}"
    elif live == "dmsquash-live" and rootfs == "squashfs":
        base = f"root=live:{device} rd.live.image rd.live.overlay.overlayfs=1"
    else:
        base = f"root={device if rootfs == 'squashfs' else 'UUID=' + fs_uuid} rootfstype={rootfs} ro"
    return " ".join(filter(None, [base, boot.serial_console(arch), extra]))


def netboot_cmdline(name: str, rootfs: str, live: str | None, local: str, base_url: str,
                    extra: str = "", arch: Arch | None = None) -> tuple[str, bool]:
    """The command line for a network boot, and whether the initrd fetches the root image over HTTP.

    squashfs with live-boot (fetch=) or dmsquash-live (root=live:URL, needs dracut's livenet module) loads
    the root into RAM; any other root image must already be on a disk of the machine (the local line)."""
    image = f"{base_url}/{name}.{rootfs}"
    if rootfs == "squashfs" and live == "live-boot":
        base = f"boot=live fetch={image}"
    elif rootfs == "squashfs" and live == "dmsquash-live":
        base = f"root=live:{image} rd.live.image rd.live.overlay.overlayfs=1 rd.neednet=1 ip=dhcp"
    else:
        return local, False
    return " ".join(filter(None, [base, boot.serial_console(arch), extra])), True


def ipxe_script(name: str, cmdline: str, fetched: bool, rootfs: str) -> str:
    root_note = (f"# {name}.{rootfs} is fetched over HTTP by the initrd: serve it from the same directory.\n"
                 if fetched else f"# The root image ({name}.{rootfs}) must already be on a disk of the machine; "
                 "root= names it.\n")
    return ("#!ipxe\n"
            f"# openos365 KIS '{name}': boot it over the network with iPXE.\n"
            f"# Serve {name}.kernel and {name}.initrd over HTTP from one directory, then `chain URL/{name}.ipxe`.\n"
            + root_note +
            "# base-url defaults to http://<DHCP next-server>/openos365; set it before chaining to change it.\n"
            "isset ${base-url} || set base-url http://${next-server}/openos365\n"
            f"kernel ${{base-url}}/{name}.kernel initrd={name}.initrd {cmdline}\n"
            f"initrd ${{base-url}}/{name}.initrd\n"
            "boot\n")


def grub_netboot_cfg(name: str, cmdline: str, fetched: bool, rootfs: str) -> str:
    root_note = (f"# {name}.{rootfs} is fetched over HTTP from kis_url by the initrd.\n" if fetched
                 else f"# The root image ({name}.{rootfs}) must already be on a disk of the machine; root= names "
                 "it.\n")
    return (f"# openos365 KIS '{name}': a GRUB menu entry for a network boot (GRUB loaded over PXE or HTTP, so\n"
            "# $root is the boot server). Put the files in kis_dir on that server and add this entry to its\n"
            "# grub.cfg (or `source` this file from it). To change the defaults, `set` and `export` kis_dir\n"
            "# and kis_url before this entry.\n"
            + root_note +
            f'menuentry "{name} (openos365, network)" {{\n'
            '  if [ -z "$kis_dir" ]; then set kis_dir=/openos365; fi\n'
            '  if [ -z "$kis_url" ]; then set kis_url=http://${net_default_server}/openos365; fi\n'
            f"  echo 'Loading {name} ...'\n"
            f"  linux ${{kis_dir}}/{name}.kernel {cmdline}\n"
            f"  initrd ${{kis_dir}}/{name}.initrd\n"
            "}\n")


# --- root images ---------------------------------------------------------------------------------------

def ext4_size(tree: ImageTree, requested: int | None) -> int:
    """Content + 20 % + 256 MiB (room to write), or --size when it fits."""
    content, inodes = boot.tree_size(tree)
    needed = content + inodes * 256 + 64 * MIB
    if requested is not None:
        if requested < needed:
            raise UserError(f"--size {log.human_size(requested)} is too small for the root tree "
                            f"({log.human_size(content)} in {inodes} files)",
                            hint=f"use at least --size {-(-needed // MIB)}M, or leave --size unset")
        return -(-requested // MIB) * MIB
    return -(-(content * 6 // 5 + EXT4_HEADROOM) // MIB) * MIB


def erofs_argv(tree: Path, output: Path, compression: str | None, fs_uuid: str, epoch: int) -> list[str]:
    return ["mkfs.erofs", *EROFS_COMPRESSION[compression], "-T", str(epoch), "-U", fs_uuid, str(output), str(tree)]


def make_root_image(ctx: ExportContext, tree: ImageTree, output: Path, fs_uuid: str) -> None:
    options, epoch = ctx.options, ctx.source.epoch
    if options.rootfs == "squashfs":
        make_squashfs(tree.root, output, options.compression, epoch)
    elif options.rootfs == "ext4":
        size = ext4_size(tree, options.size)
        with log.step(f"Making the ext4 root image ({log.human_size(size)}, sparse)"):
            with open(output, "wb") as fh:
                fh.truncate(size)
            mkfs_ext4(output, offset=0, size=size, tree=tree.root, uuid=fs_uuid, label="root", epoch=epoch)
    else:
        with log.step(f"Making the erofs root image ({options.compression or 'lz4hc'})"):
            run(erofs_argv(tree.root, output, options.compression, fs_uuid, epoch), step="mkfs.erofs", capture=True,
                env={"SOURCE_DATE_EPOCH": str(epoch)})
    os.utime(output, (epoch, epoch))


def check_erofs_module(root: Path, version: str) -> None:
    tree = ImageTree(root)
    modules = f"usr/lib/modules/{version}" if tree.is_dir(f"usr/lib/modules/{version}") else f"lib/modules/{version}"
    builtin = tree.read_text(f"{modules}/modules.builtin")
    if not tree.glob(f"{modules}/kernel/fs/erofs", "erofs.ko*") and "erofs" not in builtin:
        raise UserError(f"the image's kernel {version} has no erofs module",
                        hint="use --rootfs squashfs or ext4, or a kernel built with CONFIG_EROFS_FS")
    log.note("erofs: the module must be in the initrd (initramfs-tools: add `erofs` to "
             "/etc/initramfs-tools/modules; dracut: add_drivers+=\" erofs \"); layers/server has it")


# --- the exporter -------------------------------------------------------------------------------------

def _write(final: Path, epoch: int, *, text: str | None = None,
           copy_from: tuple[ImageTree, Path] | None = None) -> Path:
    with atomic_path(final) as temp:
        if copy_from is not None:
            copy_from[0].copy_out(str(copy_from[1]), temp)
        else:
            temp.write_text(text or "")
        os.chmod(temp, 0o644)
        os.utime(temp, (epoch, epoch))
    return final


def remove_stale_roots(outdir: Path, name: str, rootfs: str) -> None:
    """A set has one root image: drop NAME.<other type> left by an earlier export, so NAME.append and the
    root image beside it always match (`openos365 test DIR` boots the one it finds)."""
    for other in ROOT_TOOLS:
        stale = outdir / f"{name}.{other}"
        if other != rootfs and stale.exists():
            log.note(f"removing {stale.name} from an earlier export: this set's root image is {name}.{rootfs}")
            stale.unlink()
            stale.with_name(stale.name + ".sha256").unlink(missing_ok=True)


class KisExporter(Exporter):
    name = "kis"
    customizes = True
    description = "kernel + initrd + root filesystem image (squashfs|ext4|erofs), cmdline, iPXE/GRUB snippets"
    tools = ("cp",)

    def validate(self, options: Any) -> None:
        check_options(options)

    def required_tools(self, options: Any) -> list[str]:
        return [*self.tools, ROOT_TOOLS[options.rootfs]]

    def every_tool(self) -> list[str]:
        return [*self.tools, *ROOT_TOOLS.values()]

    def plan(self, ctx: ExportContext) -> list[str]:
        options, out = ctx.options, ctx.outdir / ctx.name
        check_options(options)
        make = {"squashfs": f"mksquashfs ({options.compression or 'zstd level 9'})",
                "ext4": "mkfs.ext4 -d into a sparse file (content + 20 % + 256 MiB, or --size)",
                "erofs": f"mkfs.erofs ({options.compression or 'lz4hc'})"}[options.rootfs]
        return [
            f"copy the tree; hostname {options.hostname or ctx.name}, empty machine-id, no SSH host keys, "
            "fstab without a root entry, no /etc/repart.d" + customize.summary(options),
            f"{make} -> {out}.{options.rootfs}",
            f"copy the kernel and initrd -> {out}.kernel, {out}.initrd",
            f"write the netboot snippets {out}.ipxe and {out}.grub-netboot.cfg, then the command line {out}.append",
        ]

    def export(self, ctx: ExportContext) -> tuple[list[Path], dict[str, Any]]:
        options, source, epoch = ctx.options, ctx.source, ctx.source.epoch
        check_options(options)
        # the .append file marks a complete set: drop the old one first, write the new one last
        for stale in (f"{ctx.name}.append", f"{ctx.name}.append.sha256"):
            (ctx.outdir / stale).unlink(missing_ok=True)
        kernel = boot.find_kernel(source.tree)
        live = boot.live_support(source.tree)
        if options.rootfs == "erofs":
            check_erofs_module(source.tree, kernel.version)
        if options.rootfs == "ext4" and not tools.reproducible_ext4():
            log.warn("e2fsprogs < 1.47.1: the ext4 root image boots but is not byte-reproducible "
                     "(Debian 12: apt-get install -t bookworm-backports e2fsprogs)")
        if options.rootfs != "ext4" and live is None:
            log.warn(f"the image has no live-boot or dmsquash-live: the {options.rootfs} root is mounted "
                     "read-only with no overlay, and services that write to / will fail (add live-boot to the "
                     "layer, or use --rootfs ext4)")
        fs_uuid = boot.derive_uuid(f"{source.image_id}:{ctx.name}", f"kis-{options.rootfs}")
        with log.step("Preparing the root tree"):
            tree, user = boot.prepare_live_tree(source.tree, ctx.scratch_dir("tree"), name=ctx.name,
                                                options=options, epoch=epoch)
        root = ctx.outdir / f"{ctx.name}.{options.rootfs}"
        with atomic_path(root) as temp:
            make_root_image(ctx, tree, temp, fs_uuid)
        target = arches.of_tree(ImageTree(source.tree))
        cmdline = kernel_cmdline(options.rootfs, live, fs_uuid, options.kernel_cmdline, arch=target)
        ipxe_line, fetched = netboot_cmdline(ctx.name, options.rootfs, live, cmdline, "${base-url}",
                                             options.kernel_cmdline, target)
        grub_line, _ = netboot_cmdline(ctx.name, options.rootfs, live, cmdline, "${kis_url}", options.kernel_cmdline,
                                       target)
        paths = [
            root,
            _write(ctx.outdir / f"{ctx.name}.kernel", epoch, copy_from=(tree, kernel.kernel)),
            _write(ctx.outdir / f"{ctx.name}.initrd", epoch, copy_from=(tree, kernel.initrd)),
            _write(ctx.outdir / f"{ctx.name}.ipxe", epoch,
                   text=ipxe_script(ctx.name, ipxe_line, fetched, options.rootfs)),
            _write(ctx.outdir / f"{ctx.name}.grub-netboot.cfg", epoch,
                   text=grub_netboot_cfg(ctx.name, grub_line, fetched, options.rootfs)),
        ]
        remove_stale_roots(ctx.outdir, ctx.name, options.rootfs)
        paths.append(_write(ctx.outdir / f"{ctx.name}.append", epoch, text=cmdline + "\n"))
        return paths, {"kis": {"rootfs": options.rootfs, "root_fs_uuid": fs_uuid if options.rootfs != "squashfs"
                               else None, "kernel": kernel.version, "kernel_cmdline": cmdline, "live": live,
                               "netboot_fetches_root": fetched, "root_image_size": root.stat().st_size, **user}}
