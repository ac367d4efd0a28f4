"""What an image needs to boot, found in its root tree, and the host-side customisation of that tree.

Shared by every bootable exporter (disk, ISO, KIS): kernel/initrd discovery, live-boot support, GRUB
module directories, the kernel command line, and writing identity-free system files.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import log
from .errors import UserError
from .tarapply import resolve_in_root

SERIAL_CONSOLE = "console=tty0 console=ttyS0,115200"


@dataclass(frozen=True)
class Kernel:
    version: str
    kernel: Path          # path inside the tree, e.g. boot/vmlinuz-6.1.0-50-amd64
    initrd: Path
    kernel_link: Path | None = None   # boot-loader path that survives in-guest kernel upgrades (/vmlinuz)
    initrd_link: Path | None = None


def _version_key(version: str) -> list[tuple[int, int, str]]:
    """Numeric parts compare as numbers, others as text (a number sorts after text in the same place)."""
    return [(1, int(p), "") if p.isdigit() else (0, 0, p) for p in re.split(r"[.\-+~]", version)]


def _candidates(tree: Path) -> list[tuple[str, Path, list[Path]]]:
    """(version, kernel, initrd candidates) for the layouts distributions use."""
    found = []
    boot_dir, modules_dir = in_tree(tree, "boot", follow=True), in_tree(tree, "usr/lib/modules", follow=True)
    for kernel in boot_dir.glob("vmlinuz-*"):
        version = kernel.name.removeprefix("vmlinuz-")
        found.append((version, kernel, [boot_dir / f"initrd.img-{version}", boot_dir / f"initramfs-{version}.img"]))
    for kernel in modules_dir.glob("*/vmlinuz"):
        version = kernel.parent.name
        if not any(v == version for v, _, _ in found):
            found.append((version, kernel, [kernel.parent / "initramfs.img", boot_dir / f"initramfs-{version}.img"]))
    return found


def find_kernel(tree: Path) -> Kernel:
    found = _candidates(tree)
    if not found:
        raise UserError(f"the image has no kernel (looked for /boot/vmlinuz-* and /usr/lib/modules/*/vmlinuz in "
                        f"{tree})", hint="add a kernel to the layer: linux-image-amd64 (Debian), "
                        "linux-image-generic (Ubuntu), kernel (Fedora), kernel-default (openSUSE)")
    version, kernel, initrds = max(found, key=lambda item: _version_key(item[0]))
    kernel = _file_in_tree(tree, kernel)
    initrd = next((f for f in (_file_in_tree(tree, p) for p in initrds) if f.is_file()), None)
    if initrd is None:
        raise UserError(f"the image has kernel {version} but no initrd for it",
                        hint="add an initrd generator to the layer before the kernel: initramfs-tools (Debian) "
                        "or dracut (Fedora/openSUSE), configured non-host-only")
    kernel_link = tree / "vmlinuz"
    initrd_link = tree / "initrd.img"
    same_kernel = kernel_link.is_symlink() and Path(os.readlink(kernel_link)).name == kernel.name
    return Kernel(version, kernel.relative_to(tree), initrd.relative_to(tree),
                  Path("vmlinuz") if same_kernel else None,
                  Path("initrd.img") if same_kernel and initrd_link.is_symlink() else None)


def _file_in_tree(tree: Path, path: Path) -> Path:
    """`path` with every symlink resolved inside the tree: an image's `initrd.img -> /etc/shadow` means the
    image's own /etc/shadow, never the build host's."""
    return in_tree(tree, str(path.relative_to(tree)), follow=True)


def live_support(tree: Path) -> str | None:
    """'live-boot' (Debian) or 'dmsquash-live' (dracut) when the image's initrd can boot a live medium."""
    if any(in_tree(tree, d, follow=True).is_dir() for d in ("usr/lib/live/boot", "lib/live/boot")):
        return "live-boot"
    if any(in_tree(tree, d, follow=True).is_dir() for d in ("usr/lib/dracut/modules.d/90dmsquash-live",
                                         "lib/dracut/modules.d/90dmsquash-live")):
        return "dmsquash-live"
    return None


def grub_platform_dir(tree: Path, platform: str) -> Path:
    """GRUB modules for i386-pc or x86_64-efi: the image's own (so boot code matches), else the host's."""
    for candidate in (in_tree(tree, f"usr/lib/grub/{platform}", follow=True), Path("/usr/lib/grub") / platform):
        if (candidate / "normal.mod").exists():
            if not str(candidate).startswith(str(tree)):
                log.note(f"the image has no GRUB {platform} modules; using the host's {candidate}")
            return candidate
    package = "grub-pc-bin" if platform == "i386-pc" else "grub-efi-amd64-bin"
    raise UserError(f"no GRUB modules for {platform} in the image or on the host",
                    hint=f"add {package} to the layer (Debian) or install it on the host")


def describe_tree(tree: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"kernel": None, "initrd": None, "live": live_support(tree)}
    try:
        kernel = find_kernel(tree)
        info.update(kernel=str(kernel.kernel), initrd=str(kernel.initrd), kernel_version=kernel.version)
    except UserError as exc:
        info["kernel_problem"] = exc.message
    info["grub"] = [p for p in ("i386-pc", "x86_64-efi") if (tree / "usr/lib/grub" / p / "normal.mod").exists()]
    info["systemd_repart"] = has_repart(tree)
    os_release = tree / "etc/os-release"
    if os_release.exists() or os_release.is_symlink():
        target = tree / "usr/lib/os-release"
        text = (target if os_release.is_symlink() else os_release).read_text(errors="replace")
        info["os"] = next((line.split("=", 1)[1].strip('"') for line in text.splitlines()
                           if line.startswith("PRETTY_NAME=")), None)
    return info


def has_repart(tree: Path) -> bool:
    return any((tree / p).exists() for p in ("usr/bin/systemd-repart", "bin/systemd-repart"))


def derive_uuid(seed: str, purpose: str) -> str:
    """A UUID that depends only on (seed, purpose): exports of the same image give the same bytes."""
    digest = hashlib.sha256(f"openos365:{seed}:{purpose}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


# --- writing into a private copy of the tree -----------------------------------------------------------
# Every path goes through in_tree(): symlinks inside the image resolve inside the tree (as in a container),
# so an image with `etc/ssh -> /etc/ssh` can never make an export read or change the build host's files.

def in_tree(tree: Path, rel: str, *, follow: bool = False) -> Path:
    """Host path of `rel` in the tree; its parents' symlinks resolved inside the tree (the last one too
    with follow=True, for reading)."""
    return Path(resolve_in_root(str(tree), rel.lstrip("/"), str(tree), follow_last=follow))


def read_text(tree: Path, rel: str) -> str:
    path = in_tree(tree, rel, follow=True)
    return path.read_text(errors="replace") if path.is_file() else ""


def write_file(tree: Path, rel: str, content: str, mode: int = 0o644, epoch: int | None = None,
               owner: tuple[int, int] = (0, 0)) -> Path:
    """Replace a file in the tree (never write through an existing file or symlink)."""
    path = in_tree(tree, rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text(content)
    os.chmod(path, mode)
    if os.geteuid() == 0:
        os.chown(path, *owner)
    if epoch is not None:
        os.utime(path, (epoch, epoch))
    return path


def remove(tree: Path, *patterns: str) -> None:
    """Remove entries matching DIR/NAME-PATTERN (wildcards in the last component only)."""
    for pattern in patterns:
        directory_rel, _, name_pattern = pattern.strip("/").rpartition("/")
        directory = in_tree(tree, directory_rel, follow=True)
        if not directory.is_dir():
            continue
        for name in fnmatch.filter(os.listdir(directory), name_pattern):
            path = directory / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def clear_identity(tree: Path, epoch: int) -> None:
    """No per-machine identity: empty machine-id, no SSH host keys, no random seed, no leaked resolv.conf."""
    write_file(tree, "etc/machine-id", "", 0o444, epoch)
    remove(tree, "etc/ssh/ssh_host_*_key", "etc/ssh/ssh_host_*_key.pub", "var/lib/systemd/random-seed",
           "var/lib/dbus/machine-id")


def hostname_from(name: str) -> str:
    """A valid host name made from an artifact name (letters, digits and '-', at most 63)."""
    return re.sub(r"[^a-zA-Z0-9-]+", "-", name).strip("-")[:63] or "localhost"


def set_hostname(tree: Path, hostname: str, epoch: int) -> None:
    write_file(tree, "etc/hostname", f"{hostname}\n", epoch=epoch)
    write_file(tree, "etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n"
               "::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n",
               epoch=epoch)


def set_resolver(tree: Path) -> None:
    """resolv.conf: systemd-resolved's stub where the image has it, else left for DHCP to fill."""
    path = in_tree(tree, "etc/resolv.conf")
    if path.is_symlink() or path.exists():
        path.unlink()
    if (tree / "lib/systemd/systemd-resolved").exists() or (tree / "usr/lib/systemd/systemd-resolved").exists():
        path.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    else:
        path.write_text("")


def add_user(tree: Path, user: str | None, ssh_key: str | None, epoch: int) -> dict[str, Any]:
    """Create `user` (sudo without password, locked password: log in with the SSH key) and/or install
    the key. Edits passwd/shadow/group directly: no chroot, no tools from the image needed."""
    if not user and not ssh_key:
        return {}
    key = Path(ssh_key).read_text().strip() + "\n" if ssh_key else None
    if key is not None and not re.match(r"^(ssh-|ecdsa-|sk-)", key):
        raise UserError(f"--ssh-key {ssh_key}: not an OpenSSH public key", hint="give the .pub file")
    if not user:
        _authorized_key(tree, "root", Path("root"), 0, 0, key, epoch)
        return {"ssh_key_for": "root"}
    passwd = read_text(tree, "etc/passwd")
    if any(line.split(":")[0] == user for line in passwd.splitlines()):
        raise UserError(f"--user {user}: the image already has this user", hint="pick another name")
    used = {int(line.split(":")[2]) for line in passwd.splitlines() if line.count(":") >= 6}
    uid = next(i for i in range(1000, 60000) if i not in used)
    home = Path("home") / user
    _append(tree, "etc/passwd", f"{user}:x:{uid}:{uid}::/{home}:/bin/bash\n", 0o644, epoch)
    _append(tree, "etc/group", f"{user}:x:{uid}:\n", 0o644, epoch)
    _append(tree, "etc/shadow", f"{user}:!:{epoch // 86400}:0:99999:7:::\n", 0o640, epoch, group="shadow")
    if in_tree(tree, "etc/gshadow", follow=True).exists():
        _append(tree, "etc/gshadow", f"{user}:!::\n", 0o640, epoch, group="shadow")
    write_file(tree, f"etc/sudoers.d/90-{user}", f"{user} ALL=(ALL) NOPASSWD:ALL\n", 0o440, epoch)
    home_dir = in_tree(tree, str(home))
    home_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(home_dir, 0o750)
    if os.geteuid() == 0:
        os.chown(home_dir, uid, uid)
    if key:
        _authorized_key(tree, user, home, uid, uid, key, epoch)
    return {"user": user, "uid": uid}


def _group_id(tree: Path, name: str) -> int:
    for line in read_text(tree, "etc/group").splitlines():
        parts = line.split(":")
        if parts[0] == name:
            return int(parts[2])
    return 0


def _append(tree: Path, rel: str, line: str, mode: int, epoch: int, group: str | None = None) -> None:
    content = read_text(tree, rel)
    if content and not content.endswith("\n"):
        content += "\n"
    gid = _group_id(tree, group) if group else 0
    write_file(tree, rel, content + line, mode, epoch, owner=(0, gid))


def _authorized_key(tree: Path, user: str, home: Path, uid: int, gid: int, key: str | None, epoch: int) -> None:
    if key is None:
        return
    ssh_dir = in_tree(tree, f"{home}/.ssh")
    if ssh_dir.is_symlink():
        ssh_dir.unlink()
    ssh_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(ssh_dir, 0o700)
    write_file(tree, f"{home}/.ssh/authorized_keys", key, 0o600, epoch, owner=(uid, gid))
    if os.geteuid() == 0:
        os.chown(ssh_dir, uid, gid)


def tree_size(tree: Path) -> tuple[int, int]:
    """(bytes, inodes) of a tree, counting each file in 4 KiB blocks and hard links once."""
    total, inodes, seen = 0, 0, set()
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_nlink > 1 and not os.path.isdir(os.path.join(dirpath, name)):
                if st.st_ino in seen:
                    continue
                seen.add(st.st_ino)
            inodes += 1
            total += (st.st_size + 4095) // 4096 * 4096
    return total, inodes
