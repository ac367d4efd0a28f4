"""`openos365 doctor`: what each command needs on this host, and how to get what is missing."""

from __future__ import annotations

import os

from rich.table import Table

from . import arch as arches
from . import boot, log, tools, userns
from .errors import OpenOSError
from .runner import which


def needs() -> dict[str, list[str]]:
    """Each command and the host tools it needs; the export rows come from the exporters' own table."""
    from .exporters import EXPORTERS

    by_tools: dict[tuple[str, ...], list[str]] = {}
    for fmt, exporter in EXPORTERS.items():
        by_tools.setdefault(tuple(dict.fromkeys(exporter.every_tool())), []).append(fmt)
    exports = {f"export --to {'/'.join(fmts)}": list(needed) for needed, fmts in by_tools.items()}
    return {"build": ["podman"], "bootstrap": ["mmdebstrap", "podman"], **exports,
            "pull / push": ["podman", "skopeo"], "export --password-file": ["openssl"],
            "test": ["qemu-system-x86_64", "qemu-img"]}


def run_doctor() -> bool:
    table = Table(title="openos365 host check")
    table.add_column("command")
    table.add_column("tool")
    table.add_column("status")
    table.add_column("install (Debian / Fedora / openSUSE)")
    ok = True
    for command, commands in needs().items():
        for name in commands:
            tool = tools.TOOLS[name]
            found = which(name)
            ok = ok and bool(found)
            table.add_row(command, name, f"[green]{found}[/green]" if found else "[red]missing[/red]",
                          "" if found else f"{tool.debian} / {tool.fedora} / {tool.opensuse}")
    log.console.print(table)
    version = tools.e2fsprogs_version()
    if version is not None and not tools.reproducible_ext4():
        log.warn(f"e2fsprogs {'.'.join(map(str, version))} < 1.47.1: ext4 disks are not byte-reproducible "
                 "(Debian 12: apt-get install -t bookworm-backports e2fsprogs)")
    for platform, packages in boot.GRUB_MODULE_PACKAGES.items():
        if platform != "arm64-efi" and boot.host_grub_dir(platform) is None:   # arm64 images bring their own
            log.warn(f"no GRUB {platform} modules on this host: disks and ISOs of images without their own need "
                     f"them ({packages})")
    if not any(os.path.exists(p) for p in tools.OVMF_CODE_CANDIDATES):
        log.warn("no OVMF firmware: `openos365 test --firmware uefi` needs it (Debian: ovmf, Fedora: edk2-ovmf)")
    log.info(f"container engines found: {', '.join(engine_lines()) or 'none'}")
    log.info(f"KVM: {'usable' if os.access('/dev/kvm', os.R_OK | os.W_OK) else 'not available'} "
             "(boot tests fall back to TCG)")
    log.info(rootless_line())
    log.info(arm64_line())
    return ok


def arm64_line() -> str:
    """Whether --arch arm64 can build (qemu-user through binfmt_misc) and boot (qemu-system-aarch64) here."""
    target = arches.ARCHES["arm64"]
    if arches.runs_natively(target):
        return "arm64: this host's own architecture"
    problem = arches.emulation_problem(target)
    build = "builds through qemu-user" if problem is None else f"cannot build ({problem}: {arches.EMULATION_HINT})"
    boots = "boots under qemu-system-aarch64 (TCG)" if which("qemu-system-aarch64") else \
        "cannot boot (apt-get install qemu-system-arm qemu-efi-aarch64)"
    return f"--arch arm64: {build}; {boots}"


def engine_lines() -> list[str]:
    """Each installed engine, and whether it can work here (docker: its daemon and builder) or why not."""
    from .engine import ENGINES

    lines = []
    for name, engine_cls in ENGINES.items():
        if which(engine_cls.binary) is None:
            continue
        engine = engine_cls()
        try:
            engine.check_ready()
        except OpenOSError as exc:
            lines.append(f"{name} (NOT usable: {exc.message}; fix: {exc.hint})")
            continue
        detail = engine.describe()
        lines.append(f"{name} ({detail})" if detail else name)
    return lines


def rootless_line() -> str:
    """Whether this user's exports can keep the image's owners (root, or a user namespace), and why not."""
    if os.geteuid() == 0:
        return "rootless: running as root (a normal user's exports run in podman's user namespace)"
    ready = userns.readiness()
    if ready.engine is None:
        return f"rootless: NOT ready: {ready.problem}; fix: {ready.hint}"
    return f"rootless: ready ({ready.engine} unshare; subordinate ids in /etc/subuid and /etc/subgid)"
