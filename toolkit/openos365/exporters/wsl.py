"""--to wsl: a WSL distribution, NAME.wsl (WSL >= 2.4.4: double-click or `wsl --install --from-file`) or
NAME.wsl.tar.gz (`wsl --import`, any WSL 2); --wsl-format picks, --compression xz gives xz instead of gzip.

A private copy of the flattened tree is made WSL-shaped, following the rules Microsoft's distribution
validator (microsoft/WSL distributions/validate-modern.py) checks:
- out: kernel, initrd, /boot, kernel modules, boot loaders and live-boot (their dpkg entries too, so apt
  does not bring them back), device nodes (WSL mounts /dev), /etc/resolv.conf and /etc/hostname (WSL
  writes them), fstab entries, /etc/repart.d, the boot-check test unit, SSH host keys, machine-id content;
- in: /etc/wsl.conf (systemd as init, the default user), /etc/wsl-distribution.conf and the out-of-box
  script /usr/lib/wsl/oobe.sh that creates the default user with sudo rights on first start; the units
  the validator discourages are masked.
Every access goes through imagetree: an image's absolute symlink such as /var/run -> /run never leads
outside the tree. The tar is tree.py's reproducible one, compressed by gzip -n or xz.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

from .. import boot, customize, dpkg, log
from ..artifacts import atomic_path
from ..disk.filesystems import tar_argv
from ..errors import UserError
from ..imagetree import ImageTree
from ..rootfs import copy_tree
from ..runner import run
from .base import ExportContext, Exporter

DEFAULT_UID = 1000
OOBE = "usr/lib/wsl/oobe.sh"
ICON = "usr/lib/wsl/openos365.ico"     # the Start menu shortcut's icon (WSL reads it from the tar, <= 1 MiB)
# Windows Terminal's profile fragment for the distribution (colours, font); mode as Microsoft's validator wants it
TERMINAL_PROFILE = "usr/lib/wsl/terminal-profile.json"
# What a WSL distribution must not carry (globs allowed in any component). lib/modules covers images
# without merged /usr; on merged ones it resolves to usr/lib/modules.
STRIP = (
    "boot", "efi", "vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old",
    "usr/lib/modules", "lib/modules", "usr/lib/grub", "usr/lib/systemd/boot", "usr/lib/shim",
    "etc/repart.d", "etc/resolv.conf", "etc/hostname", "etc/ssh/ssh_host_*", "var/lib/systemd/random-seed",
    "etc/systemd/system/openos365-boot-check.service", "etc/systemd/system/*.wants/openos365-boot-check.service",
    "usr/lib/systemd/system/openos365-boot-check.service", "usr/libexec/openos365/boot-check",
    "usr/libexec/openos365/boot-check.d",
)
# Kernel, boot loaders and live boot: purged from dpkg's database as well as from the tree.
PURGE = re.compile(r"^(linux-image-.+|linux-headers-.+|grub-.+|grub2-.*|shim-.+|systemd-boot(-.+)?|"
                   r"live-boot(-.+)?)$")
# validate-modern.py's DISCOURAGED_SYSTEM_UNITS (+ networkd's socket, which would start the masked service)
MASK = (
    "systemd-resolved.service", "systemd-networkd.service", "systemd-networkd.socket",
    "systemd-networkd-wait-online.service", "systemd-tmpfiles-setup.service", "systemd-tmpfiles-clean.service",
    "systemd-tmpfiles-setup-dev-early.service", "systemd-tmpfiles-setup-dev.service", "tmp.mount",
    "NetworkManager.service", "networking.service",
)


# --- pure functions: names, config files -----------------------------------------------------------------

def compressor(compression: str) -> tuple[str, str]:
    """(program for tar --use-compress-program, extension). WSL reads gzip and xz only.

    xz >= 5.4 in multi-threaded mode (-T0) gives the same bytes for any number of threads."""
    return ("xz -T0 -6", "xz") if compression == "xz" else ("gzip -n -6", "gz")


def output_name(name: str, wsl_format: str, extension: str) -> str:
    return f"{name}.wsl" if wsl_format == "wsl" else f"{name}.wsl.tar.{extension}"


def _data(name: str) -> str:
    return resources.files("openos365").joinpath("data", "wsl", name).read_text()


def wsl_conf(systemd: bool, user: str | None) -> str:
    text = _data("wsl.conf")
    if not systemd:
        text = text.replace("systemd=true", "systemd=false")
    return text + (f"\n[user]\ndefault={user}\n" if user else "")


def distribution_conf(name: str, uid: int = DEFAULT_UID) -> str:
    return _data("wsl-distribution.conf").replace("@NAME@", name).replace("@UID@", str(uid))


def oobe_script(user: str | None, uid: int = DEFAULT_UID) -> str:
    return _data("oobe.sh").replace("@USER@", user or "").replace("@UID@", str(uid))


def strip_fstab(text: str) -> str:
    """Keep the comments of an fstab, drop its entries: WSL mounts the root itself."""
    kept = [line for line in text.splitlines() if not line.strip() or line.lstrip().startswith("#")]
    kept.append("# no entries: WSL mounts the root file system itself (openos365)")
    return "\n".join(kept).lstrip("\n") + "\n"


def packages_to_purge(status: str, pattern: re.Pattern[str] = PURGE) -> list[str]:
    """Installed packages (dpkg status) whose names match."""
    return dpkg.packages_matching(status, pattern)


def is_elf64(head: bytes) -> bool:
    return head[:4] == b"\x7fELF" and head[4:5] == b"\x02"


# --- operations on the private tree copy (through imagetree) -----------------------------------------

def purge_packages(tree: ImageTree) -> list[str]:
    """Remove matching packages' files and dpkg entries, as `dpkg --purge` would but without running the
    image's maintainer scripts on the host."""
    status = dpkg.read_status(tree)
    names = packages_to_purge(status)
    infos = tree.listdir("var/lib/dpkg/info")
    for name in names:
        own = [f for f in infos if f.rsplit(".", 1)[0].split(":")[0] == name]
        listed = next((f for f in own if f.endswith(".list")), None)
        entries = tree.read_text(f"var/lib/dpkg/info/{listed}").splitlines() if listed else []
        for entry in sorted(entries, key=len, reverse=True):   # files first, then their (empty) dirs
            if tree.is_dir(entry):   # a directory, or a symlink to one (/lib -> usr/lib): only removed if empty
                if not tree.is_symlink(entry) and not tree.listdir(entry):
                    tree.remove(entry)
            else:
                tree.remove(entry)
        for f in own:
            tree.remove(f"var/lib/dpkg/info/{f}")
    if names:
        tree.write(dpkg.STATUS, dpkg.status_without(status, names))
    return names


def mask_units(tree: ImageTree, units: tuple[str, ...] = MASK) -> None:
    for unit in units:
        tree.remove_matching(f"etc/systemd/system/*.wants/{unit}")
        tree.symlink(f"etc/systemd/system/{unit}", "/dev/null")


def elf_at(tree: ImageTree, rel: str) -> bool:
    return is_elf64(tree.head(rel, 8))


def check_tree(tree: ImageTree) -> None:
    """What WSL needs to start the distribution at all."""
    if not elf_at(tree, "bin/sh"):
        raise UserError("the image has no /bin/sh (or it is not a 64-bit ELF program): WSL cannot start it",
                        hint="base the image on a distribution userland (e.g. layers/base)")
    users = [line.split(":") for line in tree.read_text("etc/passwd").splitlines()]
    if not any(len(f) == 7 and f[0] == "root" and f[2] == "0" for f in users):
        raise UserError("the image's /etc/passwd has no root user with uid 0", hint="WSL needs one; fix the image")
    if not elf_at(tree, "bin/bash"):
        log.warn("the image has no /bin/bash: WSL's validator expects one")


def customize_tree(tree: ImageTree, options: Any, epoch: int) -> dict[str, Any]:
    """The export-time settings; the first --user (sudo without a password) is WSL's default user."""
    if options.user:
        for rel in ("etc", "home", "etc/sudoers.d"):
            if tree.is_symlink(rel):
                raise UserError(f"the image's /{rel} is a symlink: cannot add --user safely",
                                hint="make it a directory in the image, or leave --user out (the OOBE creates one)")
    return customize.apply(tree, options, epoch)


def prepare_tree(root: Path | ImageTree, name: str, options: Any, epoch: int) -> dict[str, Any]:
    """Turn a private copy of an image's tree into a WSL distribution; returns what was done."""
    tree = boot.as_tree(root)
    check_tree(tree)
    purged = purge_packages(tree)
    tree.remove_matching(*STRIP)
    devices = boot.remove_device_nodes(tree)
    if tree.is_file("etc/fstab") and not tree.is_symlink("etc/fstab"):
        tree.write("etc/fstab", strip_fstab(tree.read_text("etc/fstab")))
    tree.write("etc/machine-id", "", 0o444)
    if not tree.is_symlink("var/lib/dbus/machine-id"):   # Debian links it to /etc/machine-id; a copy is an identity
        tree.remove("var/lib/dbus/machine-id")
    mask_units(tree)
    systemd = elf_at(tree, "sbin/init")
    if not systemd:
        log.warn("/sbin/init is not a program in this image: WSL starts it without systemd")
    customized = customize_tree(tree, options, epoch)
    user, uid = customized.get("user"), int(customized.get("uid", DEFAULT_UID))
    tree.write("etc/wsl.conf", wsl_conf(systemd, user))
    tree.write("etc/wsl-distribution.conf", distribution_conf(name, uid))
    tree.write(OOBE, oobe_script(user, uid), 0o755)
    tree.write(ICON, resources.files("openos365").joinpath("data", "wsl", "openos365.ico").read_bytes(), 0o644)
    tree.write(TERMINAL_PROFILE, _data("terminal-profile.json"), 0o640)
    return {"purged_packages": purged, "device_nodes_removed": devices, "masked_units": list(MASK),
            "systemd": systemd, "default_user": user, "default_uid": uid,
            **{k: v for k, v in customized.items() if k not in ("user", "uid")}}


class WslExporter(Exporter):
    name = "wsl"
    customizes = True
    description = "WSL distribution: NAME.wsl (--wsl-format wsl) or NAME.wsl.tar.gz for wsl --import"
    tools = ("cp", "tar")

    def required_tools(self, options: Any) -> list[str]:
        return [*self.tools, "xz" if options.compression == "xz" else "gzip"]

    def every_tool(self) -> list[str]:
        return [*self.tools, "gzip", "xz"]

    def output(self, ctx: ExportContext) -> Path:
        extension = compressor(ctx.options.compression)[1]
        return ctx.outdir / output_name(ctx.name, ctx.options.wsl_format, extension)

    def plan(self, ctx: ExportContext) -> list[str]:
        first = customize.users_from(ctx.options)[:1]
        user = f"default user {first[0].name}" if first else "OOBE creates the default user"
        return [f"copy the flattened tree of {ctx.source.spec}",
                "remove kernel, /boot, modules, boot loaders, device nodes, resolv.conf, hostname, fstab entries, "
                "SSH host keys, machine-id content; mask the units WSL discourages",
                f"add /etc/wsl.conf, /etc/wsl-distribution.conf, /{OOBE} ({user})",
                f"tar (sorted, clamped times) | {compressor(ctx.options.compression)[0]} -> {self.output(ctx)}"]

    def export(self, ctx: ExportContext) -> tuple[list[Path], dict[str, Any]]:
        tree = ctx.scratch_dir("wsl-tree")
        with log.step("Copying the root tree"):
            copy_tree(ctx.source.tree, tree)
        with log.step("Making it a WSL distribution"):
            details = prepare_tree(ImageTree(tree, "WSL tree"), ctx.name, ctx.options, ctx.source.epoch)
        final = self.output(ctx)
        program = compressor(ctx.options.compression)[0]
        with log.step(f"Writing {final.name}"), atomic_path(final) as temp:
            argv = tar_argv(tree, ctx.source.epoch, temp)
            run([*argv[:-1], f"--use-compress-program={program}", argv[-1]], step="tar", capture=True)
        return [final], {"wsl_format": ctx.options.wsl_format, "compression": program.split()[0],
                         "packages": dpkg.installed_packages(ImageTree(tree)), **details}
