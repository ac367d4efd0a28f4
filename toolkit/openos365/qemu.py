"""Boot an artifact under qemu and wait for the boot-check report from inside the guest.

The report comes over a virtio-serial port named org.openos365.boot-check; the image's
openos365-boot-check.service writes the system state, failed units and root sizes there, then powers
off. Images without that unit are judged by a login prompt on the serial console instead.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import arch as arches
from . import cloudseed, log, screen, tools
from .errors import BootTestError, CommandError, MissingToolError, UserError
from .runner import output, run, spawn

PORT_NAME = "org.openos365.boot-check"
OVMF_PAIRS = (("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
              ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
              ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"))
# firmware with Microsoft's UEFI CA and keys enrolled (what stock PCs and clouds trust), Secure Boot enforcing
SECURE_OVMF_PAIRS = (("/usr/share/OVMF/OVMF_CODE_4M.ms.fd", "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"),
                     ("/usr/share/OVMF/OVMF_CODE.ms.fd", "/usr/share/OVMF/OVMF_VARS.ms.fd"),
                     ("/usr/share/edk2/ovmf/OVMF_CODE.secboot.fd", "/usr/share/edk2/ovmf/OVMF_VARS.secboot.fd"))
# arm64 (qemu-efi-aarch64): the same firmware; the .ms pair has Microsoft's keys enrolled
AAVMF_PAIRS = (("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
               ("/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw", "/usr/share/edk2/aarch64/vars-template-pflash.raw"))
SECURE_AAVMF_PAIRS = (("/usr/share/AAVMF/AAVMF_CODE.ms.fd", "/usr/share/AAVMF/AAVMF_VARS.ms.fd"),)
DISK_SUFFIXES = {".raw": "raw", ".img": "raw", ".qcow2": "qcow2", ".vmdk": "vmdk", ".vhdx": "vhdx", ".vhd": "vpc"}
MEDIA = ("disk", "cdrom", "usb")
LOGIN_GRACE = 90   # seconds to wait for a report after a login prompt (images without the unit)


@dataclass(frozen=True)
class BootRequest:
    artifact: Path
    firmware: str = "bios"          # arm64: uefi whatever is asked (it has no BIOS)
    medium: str | None = None       # ISO only: cdrom (default) | usb | disk
    grow: int | None = None         # bytes to add to a disk before booting it
    timeout: int = 600
    memory: str = "1536M"
    workdir: Path = Path(".openos365")
    boots: int = 1                  # boot the same (throw-away) disk again: first-boot work must not repeat
    secure_boot: bool = False       # UEFI firmware with Microsoft's keys, Secure Boot enforcing
    install_onto: int | None = None  # install ISO: blank disks of this size; install, then boot the first alone
    install_disks: int = 1
    cloud_init: Path | None = None        # user-data: boot with a NoCloud seed; cloud-init must finish cleanly
    cloud_meta_data: Path | None = None   # the seed's meta-data (default: an instance-id and the artifact's name)
    screenshot: Path | None = None  # save the settled screen here (PNG) once the system has reported
    arch: str | None = None         # the artifact's architecture (default: what its manifest.json says, else amd64)


@dataclass
class BootReport:
    artifact: Path
    mode: str
    accel: str
    seconds: float
    fields: dict[str, str] = field(default_factory=dict)
    console_tail: list[str] = field(default_factory=list)
    note: str = ""
    earlier: list[dict[str, str]] = field(default_factory=list)   # reports of the boots before this one
    screen: tuple[int, int] | None = None    # the screenshot's width and height, when one was taken

    def summary(self) -> str:
        if not self.fields:
            return f"{self.artifact.name} booted ({self.mode}, {self.accel}) in {self.seconds:.0f}s: {self.note}"
        size = int(self.fields.get("root_fs_size", "0") or 0)
        disk = int(self.fields.get("disk_size", "0") or 0)
        installed = next((f"installed onto {e['target']}, then " for e in self.earlier if e.get("target")), "")
        return (f"{self.artifact.name} {installed}booted ({self.mode}, {self.accel}) in {self.seconds:.0f}s: state "
                f"{self.fields.get('state')}, root {self.fields.get('root_source')} {self.fields.get('root_fstype')} "
                f"{log.human_size(size)}" + (f" on a {log.human_size(disk)} disk" if disk else "") + self._cloud_init())

    def _cloud_init(self) -> str:
        """', cloud-init done (NoCloud)' when the image reports on cloud-init."""
        status, source = self.fields.get("cloud_init"), self.fields.get("cloud_init_datasource")
        return f", cloud-init {status}" + (f" ({source})" if source else "") if status else ""


def parse_report(text: str, header: str = "OPENOS365-BOOT-CHECK") -> dict[str, str] | None:
    """The key=value lines between the header (the boot check's, or the installer's) and END; None until END
    has arrived."""
    if header not in text:
        return None
    body = text.split(header, 1)[1]
    if "\nEND" not in body:
        return None
    fields = {}
    for line in body.split("\nEND", 1)[0].splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def judge(fields: dict[str, str], grow: int | None, secure_boot: bool = False, cloud_init: bool = False) -> list[str]:
    """What is wrong with a report (empty: a good boot)."""
    problems = cloudseed.problems(fields) if cloud_init else []
    if secure_boot and fields.get("secure_boot") != "enabled":
        problems.append(f"Secure Boot was '{fields.get('secure_boot', 'not reported')}' in the booted system, not "
                        "'enabled' (the firmware did not enforce it)")
    if fields.get("state") != "running":
        problems.append(f"system state is '{fields.get('state')}', not 'running'")
    if fields.get("failed"):
        problems.append(f"failed units: {fields['failed']}")
    if grow:
        problems += growth_problems(fields)
    return problems


GROWN_PART_SLACK = 80 << 20   # what may stand before and after a grown root partition: ESP, BIOS boot, GPT


def growth_problems(fields: dict[str, str]) -> list[str]:
    """The root partition must reach the end of the disk, and its filesystem fill the partition (df's size
    is the partition less ext4's metadata, about 4 %)."""
    size, part, disk = (int(fields.get(key) or 0) for key in ("root_fs_size", "root_part_size", "disk_size"))
    if disk == 0 or part < disk - GROWN_PART_SLACK:
        return [f"root partition is {log.human_size(part)} on a {log.human_size(disk)} disk: it did not grow"]
    if size < 0.9 * part:
        return [f"root filesystem is {log.human_size(size)} in a {log.human_size(part)} partition: it did not "
                "grow with the partition"]
    return []


# --- acceleration ----------------------------------------------------------------------------------

_accel_cache: dict[str, str] = {}


def accelerator(scratch: Path | None = None, target: arches.Arch | None = None) -> str:
    """kvm when /dev/kvm really runs a guest (a boot sector that exits through isa-debug-exit), else tcg.
    Another architecture's guest is always emulated (tcg)."""
    forced = os.environ.get("OPENOS365_ACCEL")
    if forced:
        return forced
    if target is not None and not arches.runs_natively(target):
        return "tcg"
    if "value" in _accel_cache:
        return _accel_cache["value"]
    value = "tcg"
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        value = "kvm" if _kvm_probe(scratch or Path(".openos365")) else "tcg"
    if value == "tcg":
        log.note("KVM is not usable here: booting with TCG (slow: about a minute per boot)")
    _accel_cache["value"] = value
    return value


def _kvm_probe(scratch: Path) -> bool:
    """A boot sector that exits through isa-debug-exit (status 3), in the work directory (nothing in /tmp)."""
    code = bytes([0xB0, 0x01, 0xE6, 0xF4, 0xF4, 0xEB, 0xFE])  # mov al,1; out 0xf4,al; hlt; jmp $
    scratch.mkdir(parents=True, exist_ok=True)
    probe = scratch / f"kvm-probe-{os.getpid()}.img"
    probe.write_bytes(code + bytes(510 - len(code)) + b"\x55\xaa")
    try:
        # same machine and CPU model as a real boot: some hosts start KVM but fail on -cpu host MSRs
        result = run(["qemu-system-x86_64", "-machine", "q35", "-accel", "kvm", "-cpu", "host", "-display", "none",
                      "-nodefaults", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                      "-drive", f"file={probe},format=raw,if=ide"], capture=True, check=False, timeout=20)
        return result.returncode == 3
    except (CommandError, MissingToolError):
        return False
    finally:
        probe.unlink(missing_ok=True)


# --- command line ------------------------------------------------------------------------------------

def firmware_args(firmware: str, work: Path, secure_boot: bool = False, target: arches.Arch | None = None) -> list[str]:
    """qemu's firmware; Secure Boot needs SMM and a flash only SMM may write (else the OS could change the
    keys), hence the machine option and the pflash property."""
    if target is not None and not target.bios:
        return _aavmf_args(work, secure_boot)
    if firmware == "bios":
        if secure_boot:
            raise UserError("--secure-boot needs --firmware uefi")
        return []
    if firmware != "uefi":
        raise UserError(f"--firmware {firmware}: use bios or uefi")
    for code, variables in SECURE_OVMF_PAIRS if secure_boot else OVMF_PAIRS:
        if os.path.exists(code) and os.path.exists(variables):
            shutil.copyfile(variables, work / "OVMF_VARS.fd")
            secure = ["-global", "driver=cfi.pflash01,property=secure,value=on"] if secure_boot else []
            return [*secure, "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                    "-drive", f"if=pflash,format=raw,unit=1,file={work / 'OVMF_VARS.fd'}"]
    what = "with Microsoft's keys enrolled (OVMF_CODE_4M.ms.fd)" if secure_boot else ""
    raise UserError(f"no OVMF firmware {what} found for --firmware uefi".replace("  ", " "),
                    hint="install it: apt-get install ovmf (Fedora: dnf install edk2-ovmf)")


def _aavmf_args(work: Path, secure_boot: bool) -> list[str]:
    """arm64's UEFI (AAVMF) as two flash devices, code and a copy of the variables; qemu's virt machine has no
    SMM, so Secure Boot there is enforced by the firmware's enrolled keys alone."""
    for code, variables in SECURE_AAVMF_PAIRS if secure_boot else AAVMF_PAIRS:
        if os.path.exists(code) and os.path.exists(variables):
            shutil.copyfile(variables, work / "AAVMF_VARS.fd")
            return ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                    "-drive", f"if=pflash,format=raw,unit=1,file={work / 'AAVMF_VARS.fd'}"]
    raise UserError("no arm64 UEFI firmware (AAVMF) found" + (" with Microsoft's keys" if secure_boot else ""),
                    hint="install it: apt-get install qemu-efi-aarch64 (Fedora: dnf install edk2-aarch64)")


def artifact_arch(artifact: Path) -> arches.Arch:
    """The architecture the artifact's manifest.json records (export writes it), else amd64."""
    import json

    art = artifact.resolve()
    manifest = (art if art.is_dir() else art.parent) / "manifest.json"
    try:
        entries = json.loads(manifest.read_text()).get("artifacts", {})
    except (OSError, ValueError, AttributeError):
        return arches.ARCHES[arches.DEFAULT]
    names = {art.name, art.with_suffix(".append").name} if art.is_file() else {p.name for p in art.iterdir()}
    for entry in entries.values():
        if isinstance(entry, dict) and names & set(entry.get("files") or {}) and entry.get("architecture"):
            return arches.get(str(entry["architecture"]))
    return arches.ARCHES[arches.DEFAULT]


def kis_files(path: Path) -> dict[str, Path]:
    """A KIS set: NAME.append beside NAME.kernel, NAME.initrd and one NAME.{squashfs,ext4,erofs}."""
    append = path if path.suffix == ".append" else next(iter(sorted(path.glob("*.append"))), None)
    if append is None:
        raise UserError(f"{path}: no *.append file: not a KIS directory", hint="export one with --to kis")
    stem = append.name.removesuffix(".append")   # not with_suffix: a NAME may contain dots

    def sibling(suffix: str) -> Path:
        return append.with_name(stem + suffix)

    files = {"append": append, "kernel": sibling(".kernel"), "initrd": sibling(".initrd")}
    roots = [sibling(s) for s in (".squashfs", ".ext4", ".erofs") if sibling(s).exists()]
    for _key, file in files.items():
        if not file.exists():
            raise UserError(f"{path}: {file.name} is missing", hint="export the KIS set again")
    if not roots:
        raise UserError(f"{path}: no {stem}.squashfs/.ext4/.erofs root image beside {append.name}")
    files["rootfs"] = roots[0]
    return files


def medium_args(req: BootRequest, work: Path, target: arches.Arch | None = None) -> tuple[list[str], str]:
    """The drives for the artifact, and a word for the mode."""
    art = req.artifact.resolve()
    if art.suffix in (".kernel", ".initrd") and art.with_suffix(".append").is_file():
        art = art.with_suffix(".append")   # any file of a KIS set names the set, not a disk to boot
    if art.is_dir() or art.suffix == ".append":
        kis = kis_files(art)
        cmdline = kis["append"].read_text().strip()
        # an ext4 root is mounted read-write: boot a throw-away snapshot of it, never the artifact itself
        access = "snapshot=on" if kis["rootfs"].suffix == ".ext4" else "readonly=on"
        return ["-kernel", str(kis["kernel"]), "-initrd", str(kis["initrd"]), "-append", cmdline,
                "-drive", f"file={kis['rootfs']},format=raw,if=virtio,{access}"], "kis"
    if not art.is_file():
        raise UserError(f"{art}: no such artifact", hint="export one first (openos365 export --to ...)")
    if art.suffix == ".iso":
        medium = req.medium or "cdrom"
        if medium == "cdrom":
            cd = "ide-cd,drive=cd" if target is None or target.bios else "scsi-cd,bus=scsi.0,drive=cd"
            scsi = [] if target is None or target.bios else ["-device", "virtio-scsi-pci,id=scsi"]   # virt: no IDE
            return [*scsi, "-drive", f"file={art},media=cdrom,readonly=on,if=none,id=cd",
                    "-device", f"{cd},bootindex=0"], "iso-cdrom"
        if medium == "usb":
            return ["-device", "qemu-xhci,id=xhci", "-drive", f"file={art},format=raw,if=none,id=stick,snapshot=on",
                    "-device", "usb-storage,bus=xhci.0,drive=stick,removable=on,bootindex=0"], "iso-usb"
        if medium == "disk":
            return ["-drive", f"file={art},format=raw,if=virtio,snapshot=on"], "iso-disk"
        raise UserError(f"--as {medium}: use one of {', '.join(MEDIA)}")
    fmt = DISK_SUFFIXES.get(art.suffix) or _json(["qemu-img", "info", "--output=json", str(art)])["format"]
    overlay = work / "overlay.qcow2"
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(art), str(overlay)]
    if req.grow:
        virtual = int(_json(["qemu-img", "info", "--output=json", "-f", fmt, str(art)])["virtual-size"])
        argv.append(str(virtual + req.grow))
    run(argv, step="create a throw-away overlay of the disk", capture=True)
    return ["-drive", f"file={overlay},format=qcow2,if=virtio"], "disk"


def _json(argv: list[str]) -> dict:
    import json

    return json.loads(output(argv))


def machine_args(target: arches.Arch, accel: str, secure_boot: bool) -> list[str]:
    """The emulator and machine: a PC (q35) for amd64; qemu's virt board with a Cortex-A57 for arm64 (under
    TCG much faster than `max`, whose pointer authentication is costly to emulate)."""
    if target.bios:
        return [target.qemu, "-machine", "q35,smm=on" if secure_boot else "q35", "-accel", accel]
    return [target.qemu, "-machine", "virt", "-accel", accel, "-cpu", "host" if accel == "kvm" else "cortex-a57"]


def qemu_argv(req: BootRequest, work: Path, accel: str) -> tuple[list[str], str]:
    target = arches.get(req.arch) if req.arch else artifact_arch(req.artifact)
    drives, mode = medium_args(req, work, target)
    argv = [*machine_args(target, accel, req.secure_boot), "-m", req.memory,
            "-smp", str(min(2, os.cpu_count() or 1)), "-display", "none", "-no-reboot", "-nodefaults",
            "-chardev", f"file,id=console,path={work / 'console.log'}", "-serial", "chardev:console",
            "-device", "virtio-serial-pci",
            "-chardev", f"file,id=bootcheck,path={work / 'report.txt'}",
            "-device", f"virtserialport,chardev=bootcheck,name={PORT_NAME}",
            "-nic", "user,model=virtio-net-pci", "-device", "virtio-rng-pci"]
    if accel == "kvm" and target.bios:
        argv += ["-cpu", "host"]
    argv += firmware_args(req.firmware, work, req.secure_boot, target) + drives
    if req.cloud_init:
        seed = work / "cidata.iso"
        if not seed.exists():
            seed = cloudseed.write_seed(work, req.artifact, req.cloud_init, req.cloud_meta_data)
        argv += cloudseed.seed_drive_args(seed)
    if req.screenshot:
        argv += screen.qemu_args(work)
    return argv, mode


# --- running -------------------------------------------------------------------------------------------

def boot_test(req: BootRequest) -> BootReport:
    if req.cloud_init:
        cloudseed.check_user_data(req.cloud_init)
    if req.cloud_meta_data:
        if not req.cloud_init:
            raise UserError("--cloud-meta-data needs --cloud-init USER-DATA", hint="give the user-data file too")
        cloudseed.check_meta_data(req.cloud_meta_data)
    target = arches.get(req.arch) if req.arch else artifact_arch(req.artifact)
    if not target.bios:   # UEFI is all it has: --firmware bios (the default) means the machine's firmware
        req = dataclasses.replace(req, firmware="uefi", arch=target.name)
    tools.require([target.qemu, "qemu-img"] + (["xorriso"] if req.cloud_init else []),
                  purpose="openos365 test" + (" --cloud-init" if req.cloud_init else ""))
    work = req.workdir.resolve() / f"boot-{os.getpid()}-{int(time.time() * 1000)}"
    work.mkdir(parents=True)
    accel = accelerator(work, target)
    try:
        if req.install_onto:
            return _install_then_boot(req, work, accel)
        argv, mode = qemu_argv(req, work, accel)
        mode = f"{mode}, {req.firmware}" + (", Secure Boot" if req.secure_boot else "")
        earlier: list[dict[str, str]] = []
        for number in range(1, req.boots + 1):
            title = f"Booting {req.artifact.name} ({mode}, {accel})" + (f", boot {number}" if req.boots > 1 else "")
            with log.step(title):
                report = _watch_once_more_after_a_tcg_panic(argv, work, req, mode, accel)
            report.earlier = list(earlier)
            earlier.append(report.fields)
            for used in ("report.txt", "console.log"):
                (work / used).unlink(missing_ok=True)
        _check_later_boots(report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _check_later_boots(report: BootReport) -> None:
    """A later boot of the same disk sees the same root: growth happened once and was kept."""
    for before in report.earlier:
        for key in ("root_fs_size", "root_part_size", "disk_size"):
            if before.get(key) != report.fields.get(key):
                raise BootTestError(f"{key} changed between boots ({before.get(key)} -> {report.fields.get(key)})",
                                    hint="first-boot growth must happen once; look at systemd-repart in the journal")


def _watch(argv: list[str], work: Path, req: BootRequest, mode: str, accel: str) -> BootReport:
    started = time.monotonic()
    proc = spawn(argv)
    report = BootReport(req.artifact, mode, accel, 0.0)
    login_seen_at: float | None = None
    try:
        while True:
            time.sleep(1)
            elapsed = time.monotonic() - started
            reported = _read(work / "report.txt")
            fields = parse_report(reported)
            console = _read(work / "console.log")
            if fields is not None:
                report.fields = fields
                break
            _stop_if_the_boot_cannot_go_on(console, work, proc, kernel="the guest kernel")
            if login_seen_at is None and "login:" in console:
                login_seen_at = elapsed
            if login_seen_at is not None and elapsed - login_seen_at > LOGIN_GRACE and not has_unit(console, reported):
                report.note = "no boot-check unit in the image: a login prompt appeared on the serial console"
                break
            if proc.poll() is not None:
                raise _failure(f"qemu stopped (exit status {proc.returncode}) before the system reported a boot",
                               work, proc)
            if elapsed > req.timeout:
                raise _failure(f"no boot report within {req.timeout}s", work, proc)
        if req.screenshot:
            report.screen = screen.capture(work, req.screenshot)
        _wait_poweroff(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    report.seconds = time.monotonic() - started
    report.console_tail = _read(work / "console.log").splitlines()[-40:]
    problems = judge(report.fields, req.grow, req.secure_boot, req.cloud_init is not None) if report.fields else []
    if req.cloud_init and not report.fields:
        problems = ["no boot report, so nothing says what cloud-init did"]
    if problems:
        raise BootTestError(f"{req.artifact.name} booted but is not healthy: " + "; ".join(problems),
                            hint="boot it by hand with `openos365 test --verbose`, or look at the units named")
    return report


# A boot loader or firmware waiting at its own shell: nothing happens there without a keyboard, so waiting out
# the timeout would only hide where the boot stopped.
PROMPTS = {re.compile(r"grub(?: rescue)?> *$"): "GRUB stopped at its shell: it found no grub.cfg where it looked",
           re.compile(r"Shell> *$"): "the firmware found nothing to boot and opened the UEFI shell"}
STUCK_HINT = ("run `set` at the same prompt (openos365 test --verbose shows the console) to see GRUB's prefix and "
              "root; the medium's grub.cfg must be where that prefix points")
ESCAPES = re.compile(r"\x1b\[[0-9;=?]*[A-Za-z]")


class GuestKernelPanic(BootTestError):
    """The guest's kernel panicked: the boot cannot go on."""


PANIC_HINT = "the console above shows where; a panic that names the root device means the initrd did not find it"
ONE_TCG_THREAD = "tcg,thread=single"


def kernel_panicked(console: str) -> bool:
    return "Kernel panic - not syncing" in console


# what UEFI firmware's boot manager, or shim, prints when a loader fails Secure Boot verification
REFUSED = ("Access Denied", "Security Violation")
KERNEL_STARTED = re.compile(r"EFI stub: |Linux version |\[\s+0\.\d+\]")


def refused_by_firmware(console: str) -> str | None:
    """The console line where the firmware or shim refused a boot loader, while no kernel has started yet
    (a booted system may log the same words). Nothing on the medium boots after that: the firmware goes on
    to network boot, which can only fail or boot something else."""
    before_kernel = KERNEL_STARTED.split(ESCAPES.sub("", console), maxsplit=1)[0]
    return next((line.strip() for line in before_kernel.splitlines() if any(word in line for word in REFUSED)),
                None)


def _stop_if_the_boot_cannot_go_on(console: str, work: Path, proc: subprocess.Popen[bytes], kernel: str) -> None:
    """Fail at once, not at the timeout, when the console shows the boot has stopped for good."""
    stuck = stuck_at_prompt(console)
    if stuck:
        raise _failure(stuck, work, proc, hint=STUCK_HINT)
    if kernel_panicked(console):
        raise _failure(f"{kernel} panicked", work, proc, hint=PANIC_HINT, kind=GuestKernelPanic)
    if refused_by_firmware(console):
        raise _failure("Secure Boot verification failed", work, proc)


def _watch_once_more_after_a_tcg_panic(argv: list[str], work: Path, req: BootRequest, mode: str,
                                       accel: str) -> BootReport:
    """qemu's multi-threaded TCG (one host thread per vCPU) now and then breaks the guest kernel's live
    patching of its own code (an int3 oops in a patched function, then a panic: seen in this project's boot
    tests with Debian 13's Linux 6.12, a few seconds into the boot). Such a boot is tried once more with one
    TCG thread for all vCPUs, which cannot race; an image that really panics panics again and fails."""
    try:
        return _watch(argv, work, req, mode, accel)
    except GuestKernelPanic:
        if accel != "tcg" or ONE_TCG_THREAD in argv:
            raise
        log.warn(f"{req.artifact.name}: the guest kernel panicked under multi-threaded TCG; booting it once more "
                 "with one TCG thread")
        for used in ("report.txt", "console.log"):
            (work / used).unlink(missing_ok=True)
        return _watch(with_one_tcg_thread(argv), work, req, mode, accel)


def with_one_tcg_thread(argv: list[str]) -> list[str]:
    return [ONE_TCG_THREAD if arg == "tcg" and argv[index - 1] == "-accel" else arg
            for index, arg in enumerate(argv)]


def stuck_at_prompt(console: str) -> str | None:
    """What the console's last line says, when it is a boot loader's or firmware's interactive prompt."""
    lines = [line.strip() for line in ESCAPES.sub("", console[-2000:]).splitlines() if line.strip()]
    if not lines:
        return None
    return next((what for prompt, what in PROMPTS.items() if prompt.search(lines[-1])), None)


def has_unit(console: str, reported: str) -> bool:
    """The boot-check unit has started (it waits for the whole boot: a desktop's goes on well after the serial
    login prompt) or its report is under way (a layer's boot-check.d script may wait for its service)."""
    return "openos365 boot check" in console or "OPENOS365-BOOT-CHECK" in reported


def _install_then_boot(req: BootRequest, work: Path, accel: str) -> BootReport:
    """Boot the install ISO with blank disks attached, wait until the installer has written, verified and
    powered off, then boot the first disk alone: it must come up healthy with its root grown to the disk."""
    if req.artifact.suffix != ".iso":
        raise UserError(f"--install-onto: {req.artifact.name} is not an install ISO",
                        hint="export one with openos365 export --to install-iso")
    assert req.install_onto is not None
    targets = [work / f"target{number}.qcow2" for number in range(req.install_disks)]
    for target in targets:
        run(["qemu-img", "create", "-q", "-f", "qcow2", str(target), str(req.install_onto)],
            step="create a blank target disk", capture=True)
    argv, mode = qemu_argv(dataclasses.replace(req, screenshot=None), work, accel)   # the installed disk's screen
    for target in targets:
        argv += ["-drive", f"file={target},format=qcow2,if=virtio"]
    title = f"Installing from {req.artifact.name} ({mode}, {req.firmware}, {accel}) onto {len(targets)} blank " \
            f"disk(s) of {log.human_size(req.install_onto)}"
    with log.step(title):
        installed = _watch_install(argv, work, req)
    (work / "report.txt").unlink(missing_ok=True)
    disk = dataclasses.replace(req, artifact=targets[0], medium=None, install_onto=None, grow=None)
    argv, _ = qemu_argv(disk, work, accel)
    with log.step(f"Booting the installed disk ({req.firmware}, {accel})"):
        report = _watch(argv, work, disk, f"installed disk, {req.firmware}", accel)
    report.artifact, report.earlier = req.artifact, [installed]
    problems = growth_problems(report.fields)
    if problems:
        raise BootTestError("the installed disk booted but " + "; ".join(problems),
                            hint="systemd-repart grows the root partition on first boot; see its unit's log")
    return report


INSTALL_UNIT = "openos365-install.service"


def installer_unit_failed(reported: str) -> bool:
    """The live system's boot check names the installer's unit among the failed ones: the unit itself failed
    (it could not start, or the script died), so the installer's own report will never come."""
    return INSTALL_UNIT in (parse_report(reported) or {}).get("failed", "").split()


def _watch_install(argv: list[str], work: Path, req: BootRequest) -> dict[str, str]:
    started = time.monotonic()
    proc = spawn(argv)
    try:
        while True:
            time.sleep(1)
            reported = _read(work / "report.txt")
            fields = parse_report(reported, "OPENOS365-INSTALL")
            if fields is not None and fields.get("result") != "installed":
                raise _failure(f"the installer stopped: {fields.get('reason', 'no reason given')}", work, proc)
            if fields is None and installer_unit_failed(reported):
                raise _failure(f"{INSTALL_UNIT} failed before the installer reported", work, proc,
                               hint="the live system's journal says why: boot the medium and run "
                                    f"journalctl -u {INSTALL_UNIT}")
            console = _read(work / "console.log")
            _stop_if_the_boot_cannot_go_on(console, work, proc, kernel="the installer's kernel")
            if proc.poll() is not None:
                if fields is not None:
                    return fields
                raise _failure(f"qemu stopped (exit status {proc.returncode}) before the installer reported",
                               work, proc)
            if time.monotonic() - started > req.timeout:
                raise _failure(f"the installer did not finish within {req.timeout}s", work, proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_poweroff(proc: subprocess.Popen[bytes], seconds: int = 120) -> None:
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        log.warn(f"the guest reported but did not power off within {seconds}s; stopping it")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _failure(message: str, work: Path, proc: subprocess.Popen[bytes], hint: str | None = None,
             kind: type[BootTestError] = BootTestError) -> BootTestError:
    if proc.poll() is None:
        proc.kill()
    out = proc.communicate()[0].decode(errors="replace").strip() if proc.stdout else ""
    whole = _read(work / "console.log").splitlines()
    lines = "\n".join(f"  | {line}" for line in whole[-25:]) or "  (nothing on the serial console)"
    extra = f"\nqemu said: {out[-800:]}" if out else ""
    refused = refused_by_firmware("\n".join(whole))
    if refused:
        return BootTestError(f"{message}\nthe firmware refused to start a boot loader: {refused[-200:]}\n"
                             f"last lines of the serial console:\n{lines}{extra}",
                             hint="with Secure Boot on, the UEFI path must be signed: export with the image's "
                             "shim and GRUB (--secure-boot auto or on; Debian: add shim-signed and "
                             "grub-efi-amd64-signed, on arm64 grub-efi-arm64-signed, to the layer), or test "
                             "without --secure-boot")
    return kind(f"{message}\nlast lines of the serial console:\n{lines}{extra}",
                hint=hint or "the image needs console=ttyS0 (arm64: ttyAMA0) on its kernel command line to show "
                         "its boot here; a missing kernel or boot loader shows as an empty console")

