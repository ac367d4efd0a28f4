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
Every path is resolved inside the tree (tarapply.resolve_in_root): an image's absolute symlink such as
/var/run -> /run never leads outside it. The tar is tree.py's reproducible one, compressed by gzip -n or xz.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import stat
from importlib import resources
from pathlib import Path
from typing import Any

from .. import boot, log
from ..artifacts import atomic_path
from ..errors import UserError
from ..rootfs import copy_tree
from ..runner import run
from ..tarapply import resolve_in_root
from .base import ExportContext, Exporter
from .tree import tar_argv

DEFAULT_UID = 1000
OOBE = "usr/lib/wsl/oobe.sh"
# What a WSL distribution must not carry (globs allowed in any component). lib/modules covers images
# without merged /usr; on merged ones it resolves to usr/lib/modules.
STRIP = (
    "boot", "efi", "vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old",
    "usr/lib/modules", "lib/modules", "usr/lib/grub", "usr/lib/systemd/boot", "usr/lib/shim",
    "etc/repart.d", "etc/resolv.conf", "etc/hostname", "etc/ssh/ssh_host_*", "var/lib/systemd/random-seed",
    "etc/systemd/system/openos365-boot-check.service", "etc/systemd/system/*.wants/openos365-boot-check.service",
    "usr/lib/systemd/system/openos365-boot-check.service", "usr/libexec/openos365/boot-check",
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


def _stanzas(status: str) -> list[str]:
    return [s.strip("\n") for s in re.split(r"\n[ \t]*\n", status) if s.strip()]


def _field(stanza: str, name: str) -> str:
    found = re.search(rf"^{name}: *(.*)$", stanza, re.MULTILINE)
    return found.group(1).strip() if found else ""


def packages_to_purge(status: str, pattern: re.Pattern[str] = PURGE) -> list[str]:
    """Installed packages (dpkg status) whose names match."""
    return sorted(_field(s, "Package") for s in _stanzas(status)
                  if pattern.match(_field(s, "Package")) and _field(s, "Status").endswith(" installed"))


def status_without(status: str, names: list[str]) -> str:
    kept = [s for s in _stanzas(status) if _field(s, "Package") not in names]
    return "".join(f"{s}\n\n" for s in kept)


def is_elf64(head: bytes) -> bool:
    return head[:4] == b"\x7fELF" and head[4:5] == b"\x02"


# --- operations on the private tree copy (paths resolved inside the tree) ---------------------------------

def inside(tree: Path, rel: str, *, follow_last: bool = False) -> Path:
    return Path(resolve_in_root(str(tree), rel.strip("/"), "WSL tree", follow_last=follow_last))


def expand(tree: Path, pattern: str) -> list[Path]:
    """Existing paths in the tree matching pattern (fnmatch in any component), resolved inside the tree."""
    rels = [""]
    for part in pattern.strip("/").split("/"):
        found: list[str] = []
        for rel in rels:
            if not any(ch in part for ch in "*?["):
                found.append(f"{rel}/{part}")
                continue
            directory = inside(tree, rel, follow_last=True)
            if directory.is_dir():
                found += [f"{rel}/{n}" for n in sorted(os.listdir(directory)) if fnmatch.fnmatchcase(n, part)]
        rels = found
    paths = {inside(tree, rel) for rel in rels}
    return sorted(p for p in paths if os.path.lexists(p))


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)   # never follows symlinks
    elif os.path.lexists(path):
        os.unlink(path)


def write(tree: Path, rel: str, content: str, mode: int = 0o644) -> Path:
    """Replace a file (never writing through what was there), root-owned."""
    path = inside(tree, rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove(path)
    path.write_text(content)
    os.chmod(path, mode)
    if os.geteuid() == 0:
        os.chown(path, 0, 0)
    return path


def remove_device_nodes(tree: Path) -> int:
    count = 0
    for dirpath, _dirs, filenames in os.walk(tree):
        for name in filenames:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                os.unlink(path)
                count += 1
    return count


def purge_packages(tree: Path) -> list[str]:
    """Remove matching packages' files and dpkg entries, as `dpkg --purge` would but without running the
    image's maintainer scripts on the host."""
    status_path = inside(tree, "var/lib/dpkg/status")
    if not status_path.is_file():
        return []
    status = status_path.read_text()
    names = packages_to_purge(status)
    info = inside(tree, "var/lib/dpkg/info", follow_last=True)
    infos = sorted(os.listdir(info)) if info.is_dir() else []
    for name in names:
        own = [f for f in infos if f.rsplit(".", 1)[0].split(":")[0] == name]
        listed = next((info / f for f in own if f.endswith(".list")), None)
        entries = listed.read_text().splitlines() if listed else []
        for entry in sorted(entries, key=len, reverse=True):   # files first, then their (empty) dirs
            path = inside(tree, entry)
            if path.is_dir():   # a directory, or a symlink to one (/lib -> usr/lib): only removed if empty
                if not path.is_symlink() and not os.listdir(path):
                    os.rmdir(path)
            elif os.path.lexists(path):
                os.unlink(path)
        for f in own:
            os.unlink(info / f)
    if names:
        write(tree, "var/lib/dpkg/status", status_without(status, names))
    return names


def mask_units(tree: Path, units: tuple[str, ...] = MASK) -> None:
    for unit in units:
        for link in expand(tree, f"etc/systemd/system/*.wants/{unit}"):
            remove(link)
        path = inside(tree, f"etc/systemd/system/{unit}")
        path.parent.mkdir(parents=True, exist_ok=True)
        remove(path)
        path.symlink_to("/dev/null")


def elf_at(tree: Path, rel: str) -> bool:
    path = inside(tree, rel, follow_last=True)
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        return is_elf64(fh.read(8))


def check_tree(tree: Path) -> None:
    """What WSL needs to start the distribution at all."""
    if not elf_at(tree, "bin/sh"):
        raise UserError("the image has no /bin/sh (or it is not a 64-bit ELF program): WSL cannot start it",
                        hint="base the image on a distribution userland (e.g. layers/base)")
    passwd = inside(tree, "etc/passwd")
    users = [line.split(":") for line in passwd.read_text().splitlines()] if passwd.is_file() else []
    if not any(len(f) == 7 and f[0] == "root" and f[2] == "0" for f in users):
        raise UserError("the image's /etc/passwd has no root user with uid 0", hint="WSL needs one; fix the image")
    if not elf_at(tree, "bin/bash"):
        log.warn("the image has no /bin/bash: WSL's validator expects one")


def add_default_user(tree: Path, user: str, ssh_key: str | None, epoch: int) -> int:
    """Create --user in the image (locked password, sudo without one): WSL logs in as that user."""
    for rel in ("etc", "home", "etc/sudoers.d"):
        if (tree / rel).is_symlink():
            raise UserError(f"the image's /{rel} is a symlink: cannot add --user {user} safely",
                            hint="make it a directory in the image, or leave --user out (the OOBE creates one)")
    return int(boot.add_user(tree, user, ssh_key, epoch)["uid"])


def prepare_tree(tree: Path, name: str, options: Any, epoch: int) -> dict[str, Any]:
    """Turn a private copy of an image's tree into a WSL distribution; returns what was done."""
    check_tree(tree)
    purged = purge_packages(tree)
    for pattern in STRIP:
        for path in expand(tree, pattern):
            remove(path)
    devices = remove_device_nodes(tree)
    fstab = inside(tree, "etc/fstab")
    if fstab.is_file() and not fstab.is_symlink():
        write(tree, "etc/fstab", strip_fstab(fstab.read_text()))
    write(tree, "etc/machine-id", "", 0o444)
    dbus_id = inside(tree, "var/lib/dbus/machine-id")
    if not dbus_id.is_symlink():   # Debian links it to /etc/machine-id; a copy would be an identity
        remove(dbus_id)
    mask_units(tree)
    systemd = elf_at(tree, "sbin/init")
    if not systemd:
        log.warn("/sbin/init is not a program in this image: WSL starts it without systemd")
    uid = add_default_user(tree, options.user, options.ssh_key, epoch) if options.user else DEFAULT_UID
    write(tree, "etc/wsl.conf", wsl_conf(systemd, options.user))
    write(tree, "etc/wsl-distribution.conf", distribution_conf(name, uid))
    write(tree, OOBE, oobe_script(options.user, uid), 0o755)
    return {"purged_packages": purged, "device_nodes_removed": devices, "masked_units": list(MASK),
            "systemd": systemd, "default_user": options.user, "default_uid": uid}


class WslExporter(Exporter):
    name = "wsl"
    description = "WSL distribution: NAME.wsl (--wsl-format wsl) or NAME.wsl.tar.gz for wsl --import"
    tools = ("cp", "tar")

    def required_tools(self, options: Any) -> list[str]:
        return [*self.tools, "xz" if options.compression == "xz" else "gzip"]

    def output(self, ctx: ExportContext) -> Path:
        extension = compressor(ctx.options.compression)[1]
        return ctx.outdir / output_name(ctx.name, ctx.options.wsl_format, extension)

    def plan(self, ctx: ExportContext) -> list[str]:
        user = f"default user {ctx.options.user}" if ctx.options.user else "OOBE creates the default user"
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
            details = prepare_tree(tree, ctx.name, ctx.options, ctx.source.epoch)
        final = self.output(ctx)
        program = compressor(ctx.options.compression)[0]
        with log.step(f"Writing {final.name}"), atomic_path(final) as temp:
            argv = tar_argv(tree, ctx.source.epoch, temp)
            run([*argv[:-1], f"--use-compress-program={program}", argv[-1]], step="tar", capture=True)
        from ..export import installed_packages  # what the distribution has, not the source image

        return [final], {"wsl_format": ctx.options.wsl_format, "compression": program.split()[0],
                         "packages": installed_packages(tree), **details}
