"""What an image needs to boot, found in its root tree, and the host-side customisation of that tree.

Shared by every bootable exporter (disk, ISO, KIS): kernel/initrd discovery, live-boot support, GRUB
module directories, the kernel command line, and writing identity-free system files.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import customize, log
from .arch import ARCHES, Arch
from .errors import UserError
from .imagetree import ImageTree, TreeError
from .rootfs import clamp_mtimes, copy_tree

SERIAL_CONSOLE = "console=tty0 console=ttyS0,115200"


def serial_console(arch: Arch | None = None) -> str:
    """The kernel's consoles: the screen, and last (so /dev/console) the architecture's serial port."""
    return f"console=tty0 console={arch.console}" if arch else SERIAL_CONSOLE


@dataclass(frozen=True)
class Kernel:
    version: str
    kernel: Path          # path inside the tree, without symlinks, e.g. boot/vmlinuz-6.1.0-50-amd64
    initrd: Path
    kernel_link: Path | None = None   # boot-loader path that survives in-guest kernel upgrades (/vmlinuz)
    initrd_link: Path | None = None

    @property
    def survives_upgrades(self) -> bool:
        """The boot loader can name paths the image's kernel packages keep pointing at the newest kernel;
        otherwise grub.cfg finds the newest kernel at boot (disk.grub.discovery_config)."""
        return self.kernel_link is not None and self.initrd_link is not None


# Links a distribution's kernel packages move to each newly installed kernel, best first: Debian and Ubuntu
# (linux-base, in / by default or in /boot with link_in_boot), openSUSE (the kernel's %post, in /boot).
UPGRADE_LINKS = (("vmlinuz", "initrd.img"), ("boot/vmlinuz", "boot/initrd.img"), ("boot/vmlinuz", "boot/initrd"))
# A kernel's initrd next to /boot/vmlinuz-<name>: Debian/Ubuntu (initramfs-tools), Fedora and Arch
# (dracut, mkinitcpio), openSUSE (dracut, named by its mkinitrd wrapper).
BOOT_INITRDS = ("boot/initrd.img-{}", "boot/initramfs-{}.img", "boot/initrd-{}")


@dataclass(frozen=True)
class _Candidate:
    version: str
    kernel: str                  # as found, symlinks not resolved
    initrds: tuple[str, ...]     # where its initrd may be, best first
    by_package: bool = False     # Arch: /boot/vmlinuz-<pkgbase>, replaced in place by each kernel upgrade


def _version_key(version: str) -> list[tuple[int, int, str]]:
    """Numeric parts compare as numbers, others as text (a number sorts after text in the same place)."""
    return [(1, int(p), "") if p.isdigit() else (0, 0, p) for p in re.split(r"[.\-+~]", version)]


def _package_bases(tree: ImageTree) -> dict[str, str]:
    """Arch's kernel packages: pkgbase (linux, linux-lts) -> version, from usr/lib/modules/<version>/pkgbase.
    Their files in /boot are named after the package, not the version: /boot/vmlinuz-linux."""
    bases = {}
    for directory in tree.glob("usr/lib/modules", "*"):
        try:
            name = tree.read_text(f"{directory}/pkgbase", limit=256).strip()
        except (TreeError, OSError):
            continue
        if name and "/" not in name:
            bases[name] = directory.rpartition("/")[2]
    return bases


def _candidates(tree: ImageTree) -> list[_Candidate]:
    """The kernels of the layouts distributions use: /boot/vmlinuz-<version> (Debian, Fedora, openSUSE),
    /boot/vmlinuz-<pkgbase> (Arch), /usr/lib/modules/<version>/vmlinuz (Fedora's kernel-core, bootc)."""
    bases = _package_bases(tree)
    found = []
    for kernel in tree.glob("boot", "vmlinuz-*"):
        name = kernel.rpartition("/vmlinuz-")[2]
        initrds = tuple(pattern.format(name) for pattern in BOOT_INITRDS)
        found.append(_Candidate(bases.get(name, name), kernel, initrds, by_package=name in bases))
    for directory in tree.glob("usr/lib/modules", "*"):
        version = directory.rpartition("/")[2]
        if tree.is_file(f"{directory}/vmlinuz") and not any(c.version == version for c in found):
            found.append(_Candidate(version, f"{directory}/vmlinuz", (f"{directory}/initramfs.img",
                                                                      *(p.format(version) for p in BOOT_INITRDS))))
    return found


def find_kernel(root: Path | ImageTree) -> Kernel:
    """The newest kernel and its initrd, as paths without symlinks: an image's `initrd.img -> /etc/shadow`
    means the image's own /etc/shadow, never the build host's."""
    tree = as_tree(root)
    found = [c for c in _candidates(tree) if tree.is_file(c.kernel)]
    if not found:
        raise UserError(f"the image has no kernel (looked for /boot/vmlinuz-* and /usr/lib/modules/*/vmlinuz in "
                        f"{tree.root})", hint="add a kernel to the layer: linux-image-amd64 (Debian), "
                        "linux-image-generic (Ubuntu), kernel (Fedora), kernel-default (openSUSE), linux (Arch)")
    best = max(found, key=lambda c: _version_key(c.version))
    initrd_path = next((p for p in best.initrds if tree.is_file(p)), None)
    if initrd_path is None:
        raise UserError(f"the image has kernel {best.version} but no initrd for it",
                        hint="add an initrd generator to the layer before the kernel: initramfs-tools (Debian), "
                        "dracut (Fedora/openSUSE, configured non-host-only) or mkinitcpio (Arch)")
    kernel, initrd = tree.resolve(best.kernel, follow=True), tree.resolve(initrd_path, follow=True)
    if best.by_package:
        links: tuple[Path | None, Path | None] = (Path(best.kernel), Path(initrd_path))
    else:
        links = _upgrade_links(tree, kernel, initrd)
    return Kernel(best.version, Path(kernel), Path(initrd), *links)


def _upgrade_links(tree: ImageTree, kernel: str, initrd: str) -> tuple[Path | None, Path | None]:
    """The first pair of UPGRADE_LINKS that leads to this very kernel and initrd, else (None, None)."""
    for kernel_link, initrd_link in UPGRADE_LINKS:
        if (tree.is_symlink(kernel_link) and tree.is_symlink(initrd_link)
                and tree.resolve(kernel_link, follow=True) == kernel
                and tree.resolve(initrd_link, follow=True) == initrd):
            return Path(kernel_link), Path(initrd_link)
    return None, None


def as_tree(root: Path | ImageTree) -> ImageTree:
    return root if isinstance(root, ImageTree) else ImageTree(root)


def live_support(root: Path | ImageTree) -> str | None:
    """'live-boot' (Debian) or 'dmsquash-live' (dracut) when the image's initrd can boot a live medium."""
    tree = as_tree(root)
    if any(tree.is_dir(d) for d in ("usr/lib/live/boot", "lib/live/boot")):
        return "live-boot"
    if any(tree.is_dir(f"{lib}/dracut/modules.d/90dmsquash-live") for lib in ("usr/lib", "lib")):
        return "dmsquash-live"
    return None


# Where GRUB's modules for a platform live: Debian, Ubuntu, Fedora and Arch (usr/lib/grub/<platform>), openSUSE
# (usr/share/grub2/<platform>, from grub2-i386-pc and grub2-x86_64-efi).
GRUB_MODULE_DIRS = ("usr/lib/grub", "usr/share/grub2")
GRUB_MODULE_PACKAGES = {
    "i386-pc": "grub-pc-bin (Debian), grub2-pc-modules (Fedora), grub2-i386-pc (openSUSE), grub (Arch)",
    "x86_64-efi": "grub-efi-amd64-bin (Debian), grub2-efi-x64-modules (Fedora), grub2-x86_64-efi (openSUSE), "
                  "grub (Arch)",
    "arm64-efi": "grub-efi-arm64-bin (Debian), grub2-efi-aa64-modules (Fedora), grub2-arm64-efi (openSUSE), "
                 "grub (Arch)",
}


def image_grub_dir(root: Path | ImageTree, platform: str) -> str | None:
    """The image's directory of GRUB modules for platform (i386-pc, x86_64-efi), or None."""
    tree = as_tree(root)
    return next((f"{d}/{platform}" for d in GRUB_MODULE_DIRS if tree.is_file(f"{d}/{platform}/normal.mod")), None)


def host_grub_dir(platform: str, host_root: Path = Path("/")) -> Path | None:
    """The build host's GRUB modules for platform (the grub2-* packages of Fedora and openSUSE too), or None."""
    return next((host_root / d / platform for d in GRUB_MODULE_DIRS
                 if (host_root / d / platform / "normal.mod").exists()), None)


def grub_modules(root: Path | ImageTree, platform: str, scratch: Path, host_root: Path = Path("/")) -> Path:
    """GRUB modules for i386-pc or x86_64-efi: the image's own (so boot code matches the image), copied out
    as regular files into scratch (host tools such as grub-mkimage then read copies, never image paths);
    else the host's."""
    tree = as_tree(root)
    own = image_grub_dir(tree, platform)
    if own is not None:
        return tree.copy_dir_out(own, scratch / f"grub-{platform}")
    host = host_grub_dir(platform, host_root)
    if host is not None:
        log.note(f"the image has no GRUB {platform} modules; using the host's {host}")
        return host
    raise UserError(f"no GRUB modules for {platform} in the image or on the host",
                    hint=f"add the package to the layer, or install it on the host: {GRUB_MODULE_PACKAGES[platform]}")


@dataclass(frozen=True)
class SignedLayout:
    """Where a distribution keeps its signed UEFI boot chain. `vendor` is the \\EFI\\<vendor> directory its
    signed GRUB takes as prefix (it reads grub.cfg there, or else next to itself)."""

    distribution: str
    shim: tuple[str, ...]          # candidates, best first (paths in the image)
    grub: tuple[str, ...]
    mok_manager: tuple[str, ...]
    vendor: str
    packages: str                  # what to add to a layer
    arch: str = "amd64"


SIGNED_LAYOUTS = (
    SignedLayout("Debian", ("usr/lib/shim/shimx64.efi.signed",), ("usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",),
                 ("usr/lib/shim/mmx64.efi.signed",), "debian", "shim-signed grub-efi-amd64-signed"),
    SignedLayout("Ubuntu", ("usr/lib/shim/shimx64.efi.signed.latest", "usr/lib/shim/shimx64.efi.signed.previous"),
                 ("usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",), ("usr/lib/shim/mmx64.efi.signed",),
                 "ubuntu", "shim-signed grub-efi-amd64-signed"),
    SignedLayout("Fedora", ("boot/efi/EFI/fedora/shimx64.efi",), ("boot/efi/EFI/fedora/grubx64.efi",),
                 ("boot/efi/EFI/fedora/mmx64.efi",), "fedora", "shim-x64 grub2-efi-x64"),
    SignedLayout("openSUSE", ("usr/share/efi/x86_64/shim.efi",), ("usr/share/efi/x86_64/grub.efi",),
                 ("usr/share/efi/x86_64/MokManager.efi",), "opensuse", "shim grub2-x86_64-efi"),
    SignedLayout("Debian", ("usr/lib/shim/shimaa64.efi.signed",),
                 ("usr/lib/grub/arm64-efi-signed/grubaa64.efi.signed",), ("usr/lib/shim/mmaa64.efi.signed",),
                 "debian", "shim-signed grub-efi-arm64-signed", "arm64"),
    SignedLayout("Ubuntu", ("usr/lib/shim/shimaa64.efi.signed.latest", "usr/lib/shim/shimaa64.efi.signed.previous"),
                 ("usr/lib/grub/arm64-efi-signed/grubaa64.efi.signed",), ("usr/lib/shim/mmaa64.efi.signed",),
                 "ubuntu", "shim-signed grub-efi-arm64-signed", "arm64"),
    SignedLayout("Fedora", ("boot/efi/EFI/fedora/shimaa64.efi",), ("boot/efi/EFI/fedora/grubaa64.efi",),
                 ("boot/efi/EFI/fedora/mmaa64.efi",), "fedora", "shim-aa64 grub2-efi-aa64", "arm64"),
    SignedLayout("openSUSE", ("usr/share/efi/aarch64/shim.efi",), ("usr/share/efi/aarch64/grub.efi",),
                 ("usr/share/efi/aarch64/MokManager.efi",), "opensuse", "shim grub2-arm64-efi", "arm64"),
)


@dataclass(frozen=True)
class SignedBoot:
    """The image's signed shim and GRUB (and MokManager, when it has one): firmware -> shim -> GRUB ->
    the signed kernel, as each distribution ships them."""

    distribution: str
    shim: str
    grub: str
    mok_manager: str | None
    vendor: str
    arch: Arch = ARCHES["amd64"]


def find_signed_boot(root: Path | ImageTree, arch: Arch | None = None) -> SignedBoot | None:
    tree = as_tree(root)
    arch = arch or ARCHES["amd64"]

    def first(candidates: tuple[str, ...]) -> str | None:
        return next((path for path in candidates if tree.is_file(path)), None)

    for layout in (layout for layout in SIGNED_LAYOUTS if layout.arch == arch.name):
        shim, grub_efi = first(layout.shim), first(layout.grub)
        if shim and grub_efi:
            return SignedBoot(layout.distribution, shim, grub_efi, first(layout.mok_manager), layout.vendor, arch)
    return None


def secure_boot_chain(root: Path | ImageTree, secure_boot: str, firmware: str,
                      arch: Arch | None = None) -> SignedBoot | None:
    """The signed chain the UEFI path boots through, or None for grub-mkimage's own (unsigned) image.
    `--secure-boot on` without the signed binaries is an error before any work, naming the packages."""
    if firmware == "bios" or secure_boot == "off":
        return None
    signed = find_signed_boot(root, arch)
    if signed is None and secure_boot == "on":
        raise UserError("--secure-boot on: the image has no signed shim and GRUB to boot through",
                        hint=signed_boot_hint(root) + ", or export with --secure-boot off")
    return signed


def signed_efi_files(root: Path | ImageTree, signed: SignedBoot, chain_cfg: str, work: Path) -> dict[str, Path]:
    """ESP path -> host copy: shim as the removable-media loader \\EFI\\BOOT\\BOOTX64.EFI, the signed GRUB beside
    it (shim loads grubx64.efi from its own directory), MokManager, and the config that hands over to the
    real one, both next to GRUB and in its built-in prefix \\EFI\\<vendor>. No fallback (fbx64.efi): it
    would write boot entries into the machine's NVRAM and reset."""
    tree = as_tree(root)
    work.mkdir(parents=True, exist_ok=True)
    suffix = signed.arch.efi_suffix
    files = {signed.arch.efi_loader: tree.copy_out(signed.shim, work / f"shim{suffix}.efi"),
             f"/EFI/BOOT/grub{suffix}.efi": tree.copy_out(signed.grub, work / f"grub{suffix}.efi")}
    if signed.mok_manager:
        files[f"/EFI/BOOT/mm{suffix}.efi"] = tree.copy_out(signed.mok_manager, work / f"mm{suffix}.efi")
    config = work / "grub.cfg"
    config.write_text(chain_cfg)
    files["/EFI/BOOT/grub.cfg"] = config
    files[f"/EFI/{signed.vendor}/grub.cfg"] = config
    return files


def uefi_loader_files(root: Path | ImageTree, signed: SignedBoot | None, *, search: str, module_dir: Path,
                      early_cfg: Path, modules: list[str], work: Path, arch: Arch | None = None) -> dict[str, Path]:
    """What goes under \\EFI on an ESP or an EFI boot image, found by `search`: the image's signed chain
    (Secure Boot), else GRUB's own BOOTX64.EFI (BOOTAA64.EFI) made by grub-mkimage from the module copies."""
    from .disk import grub

    arch = arch or ARCHES["amd64"]
    if signed is not None:
        return signed_efi_files(root, signed, grub.chain_config(search), work / "signed")
    loader = arch.efi_loader
    return {loader: grub.mkimage(fmt=arch.efi_platform, module_dir=module_dir, early_cfg=early_cfg,
                                 output=work / loader.rsplit("/", 1)[1], modules=grub.efi_modules(modules, arch))}


# Distributions whose own repositories have no Microsoft-signed shim (Arch: shim-signed is in the AUR only).
UNSIGNED_DISTRIBUTIONS = {"arch": "Arch Linux has no signed shim in its repositories (shim-signed is in the AUR): "
                                  "enrol your own keys and sign GRUB and the kernel"}


def signed_boot_hint(root: Path | ImageTree) -> str:
    """Which packages give an image of this distribution its signed boot chain."""
    words = " ".join(os_release(root).get(k, "") for k in ("ID", "ID_LIKE")).lower()
    for distribution, hint in UNSIGNED_DISTRIBUTIONS.items():
        if distribution in words.split():
            return hint
    for layout in SIGNED_LAYOUTS:
        if layout.vendor in words.split() or layout.distribution.lower() in words:
            return f"add {layout.packages} to the layer"
    return "add the distribution's signed shim and GRUB to the layer (Debian: shim-signed grub-efi-amd64-signed; " \
           "Fedora: shim-x64 grub2-efi-x64; openSUSE: shim grub2-x86_64-efi)"


def os_release(root: Path | ImageTree) -> dict[str, str]:
    """The image's os-release fields (etc/os-release, else usr/lib/os-release)."""
    tree = as_tree(root)
    text = tree.read_text("etc/os-release", limit=64 << 10) or tree.read_text("usr/lib/os-release", limit=64 << 10)
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            fields[key.strip()] = value.strip().strip('"').strip("'")
    return fields


def describe_tree(root: Path | ImageTree) -> dict[str, Any]:
    tree = as_tree(root)
    info: dict[str, Any] = {"kernel": None, "initrd": None, "live": live_support(tree)}
    try:
        kernel = find_kernel(tree)
        info.update(kernel=str(kernel.kernel), initrd=str(kernel.initrd), kernel_version=kernel.version)
    except UserError as exc:
        info["kernel_problem"] = exc.message
    info["grub"] = [p for p in ("i386-pc", "x86_64-efi", "arm64-efi") if image_grub_dir(tree, p)]
    info["systemd_repart"] = has_repart(tree)
    try:
        info["os"] = os_release(tree).get("PRETTY_NAME")
    except TreeError as exc:
        info["os_problem"] = exc.message
    return info


def has_repart(root: Path | ImageTree) -> bool:
    tree = as_tree(root)
    return any(tree.is_file(p) for p in ("usr/bin/systemd-repart", "bin/systemd-repart"))


def derive_uuid(seed: str, purpose: str) -> str:
    """A UUID that depends only on (seed, purpose): exports of the same image give the same bytes."""
    digest = hashlib.sha256(f"openos365:{seed}:{purpose}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


# --- writing into a private copy of the tree -----------------------------------------------------------
# Every access goes through ImageTree: symlinks inside the image resolve inside the tree (as in a container),
# so an image with `etc/ssh -> /etc/ssh` can never make an export read or change the build host's files.

# Per-machine identity and secrets an image must not carry (wildcards allowed in any component).
IDENTITY = (
    "var/lib/dbus/machine-id", "etc/ssh/ssh_host_*_key", "etc/ssh/ssh_host_*_key.pub",
    "var/lib/systemd/random-seed", "var/lib/systemd/credential.secret", "boot/loader/random-seed",
    "efi/loader/random-seed", "boot/efi/loader/random-seed", "etc/ssl/private/ssl-cert-snakeoil.key",
    "etc/ssl/certs/ssl-cert-snakeoil.pem", "var/lib/dhcp/*.leases", "var/lib/dhclient/*.lease*",
    "var/lib/NetworkManager/*.lease", "var/lib/NetworkManager/internal-*", "var/lib/NetworkManager/secret_key",
)
SNAKEOIL_UNIT = """[Unit]
Description=Make this machine's own snakeoil TLS key pair (openos365 removed the image's)
ConditionPathExists=!/etc/ssl/private/ssl-cert-snakeoil.key
Before=network-pre.target

[Service]
Type=oneshot
ExecStart=/usr/sbin/make-ssl-cert generate-default-snakeoil --force-overwrite

[Install]
WantedBy=multi-user.target
"""


def clear_identity(root: Path | ImageTree, epoch: int) -> list[str]:
    """No per-machine identity or secret: empty machine-id, no SSH host keys, random seeds, systemd's
    credential secret, snakeoil TLS key (remade on first boot where make-ssl-cert exists) or DHCP leases.
    For the bootable formats: no device nodes either (see remove_device_nodes)."""
    tree = as_tree(root)
    tree.write("etc/machine-id", "", 0o444, mtime=epoch)
    remove_device_nodes(tree)
    removed = tree.remove_matching(*IDENTITY)
    if "etc/ssl/private/ssl-cert-snakeoil.key" in removed and tree.is_file("usr/sbin/make-ssl-cert"):
        tree.write("etc/systemd/system/openos365-snakeoil.service", SNAKEOIL_UNIT, mtime=epoch)
        tree.symlink("etc/systemd/system/multi-user.target.wants/openos365-snakeoil.service",
                     "/etc/systemd/system/openos365-snakeoil.service")
    return removed


def remove_device_nodes(root: Path | ImageTree) -> int:
    """Drop character and block device nodes. A booted system's /dev is devtmpfs, WSL mounts its own, and
    a rootless export cannot make them: without them, root and rootless exports give the same bytes."""
    tree = as_tree(root)
    count = 0
    for _rel, _dirs, names, dir_fd in tree.walk():
        devices = [n for n in names if _is_device(os.stat(n, dir_fd=dir_fd, follow_symlinks=False).st_mode)]
        if not devices:
            continue
        before = os.stat(dir_fd)
        for name in devices:
            os.unlink(name, dir_fd=dir_fd)
        os.utime(dir_fd, ns=(before.st_atime_ns, before.st_mtime_ns))   # as if they had never been there
        count += len(devices)
    return count


def _is_device(mode: int) -> bool:
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def hostname_from(name: str) -> str:
    """A valid host name made from an artifact name (letters, digits and '-', at most 63)."""
    return re.sub(r"[^a-zA-Z0-9-]+", "-", name).strip("-")[:63] or "localhost"


def set_hostname(root: Path | ImageTree, hostname: str, epoch: int) -> None:
    tree = as_tree(root)
    tree.write("etc/hostname", f"{hostname}\n", mtime=epoch)
    tree.write("etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n"
               "::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n",
               mtime=epoch)


def set_resolver(root: Path | ImageTree) -> None:
    """resolv.conf: systemd-resolved's stub where the image has it, else left for DHCP to fill."""
    tree = as_tree(root)
    if any(tree.is_file(p) for p in ("lib/systemd/systemd-resolved", "usr/lib/systemd/systemd-resolved")):
        tree.symlink("etc/resolv.conf", "../run/systemd/resolve/stub-resolv.conf")
    else:
        tree.write("etc/resolv.conf", "")


def tree_size(root: Path | ImageTree) -> tuple[int, int]:
    """(bytes, inodes) of a tree, counting each file in 4 KiB blocks, hard links once, and a sparse file
    (allocated less than half its size) by what it allocates."""
    tree = as_tree(root)
    total, inodes, seen = 0, 0, set()
    for _rel, dirnames, filenames, dir_fd in tree.walk():
        for name in [*dirnames, *filenames]:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if st.st_ino in seen:
                    continue
                seen.add(st.st_ino)
            inodes += 1
            size = st.st_blocks * 512 if st.st_blocks * 1024 < st.st_size else st.st_size
            total += (size + 4095) // 4096 * 4096
    return total, inodes


# The live root is an overlay the initrd sets up: nothing here may mount / by UUID (live-boot appends its
# own `overlay / overlay rw` line at boot).
LIVE_FSTAB = "# written by openos365: the initrd sets up the root file system; nothing else to mount\n"


def prepare_live_tree(source: Path, dest: Path, *, name: str, options: Any, epoch: int
                      ) -> tuple[ImageTree, dict[str, Any]]:
    """A private copy of the tree for a root that is not the partitioned disk (live ISO, KIS): no identity,
    the host name, no UUID fstab, no repart config (systemd-repart fails on a live root)."""
    tree = ImageTree(dest, "the live tree")
    copy_tree(source, tree.root)
    clear_identity(tree, epoch)
    set_hostname(tree, options.hostname or hostname_from(name), epoch)
    set_resolver(tree)
    user = customize.apply(tree, options, epoch)
    if tree.remove_matching("etc/repart.d/*"):
        log.note("dropped /etc/repart.d from this copy: there is no partition table to grow")
    tree.write("etc/fstab", LIVE_FSTAB, mtime=epoch)
    clamp_mtimes(tree.root, epoch)
    return tree, user
