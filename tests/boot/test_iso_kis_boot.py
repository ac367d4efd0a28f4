"""layers/server exported to a live ISO and a KIS set that really boot under qemu.

The ISO boots as a CD under BIOS and UEFI and as a USB stick under UEFI; the KIS set by direct kernel
boot, and over the network through its iPXE script and its GRUB netboot entry. Each boot asserts the
report of the image's openos365-boot-check unit. The ISO and the KIS set are exported once per module;
each boot takes one to two minutes under TCG. Run them one at a time (one qemu per core).
"""

from __future__ import annotations

import functools
import http.server
import shutil
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from openos365 import qemu
from openos365.artifacts import sha256_of as sha256
from openos365.qemu import BootRequest, boot_test
from tests.conftest import REPO, cli

pytestmark = pytest.mark.boot
SERVER_REF = "localhost/openos365/server:latest"
ESP_TYPE = uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B").bytes_le
HOST = "10.0.2.2"   # the host as qemu's user-mode network shows it to the guest


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest) -> str:
    """The server image: the one already built when it exists (no rebuild), else layers/server built once."""
    if subprocess.run(["podman", "image", "exists", SERVER_REF], check=False).returncode == 0:
        return SERVER_REF
    return request.getfixturevalue("server_image")


@pytest.fixture(scope="module")
def iso_image(server: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("iso")
    cli("export", "--to", "iso", server, "-o", str(out))
    return out / "server.iso"


@pytest.fixture(scope="module")
def kis_dir(server: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kis")
    cli("export", "--to", "kis", server, "-o", str(out))
    return out


def boot(artifact: Path, **kwargs) -> dict[str, str]:
    report = boot_test(BootRequest(artifact=artifact, workdir=REPO / ".openos365", timeout=900, **kwargs))
    fields = report.fields
    assert fields, report.note
    assert fields["state"] == "running" and fields["failed"] == "", fields
    assert fields["hostname"] == "server"
    assert len(fields["machine_id"]) == 32  # made at boot, not shipped
    return fields


# --- the ISO, offline ------------------------------------------------------------------------------------

def test_iso_has_bios_and_uefi_el_torito_images(iso_image):
    report = subprocess.run(["xorriso", "-indev", str(iso_image), "-report_el_torito", "plain"],
                            capture_output=True, text=True, check=True).stdout
    images = [line.split() for line in report.splitlines() if line.startswith("El Torito boot img :")]
    assert sorted(parts[6] for parts in images) == ["BIOS", "UEFI"], report
    assert "/boot/grub/bios.img" in report
    pvd = subprocess.run(["xorriso", "-indev", str(iso_image), "-pvd_info"], capture_output=True, text=True,
                         check=True).stdout
    assert "Volume Id    : OPENOS365" in pvd
    assert "Publisher Id : OPENOS365" in pvd and "App Id       : SERVER (OPENOS365)" in pvd  # ISO 9660 upper-cases
    files = subprocess.run(["xorriso", "-indev", str(iso_image), "-find", "/live", "-type", "f"],
                           capture_output=True, text=True, check=True).stdout
    for name in ("vmlinuz", "initrd.img", "filesystem.squashfs"):
        assert f"/live/{name}" in files


def test_iso_carries_a_hybrid_mbr_and_a_gpt_with_the_efi_partition(iso_image):
    with open(iso_image, "rb") as fh:
        head = fh.read(64 * 512)
        assert head[510:512] == b"\x55\xaa"
        assert any(head[:440]), "no MBR boot code: not bootable as a BIOS USB stick"
        assert head[0x1BE + 4] == 0xEE  # protective entry for the GPT
        # --mbr-force-bootable: a tiny extra entry marked active, for BIOSes that boot only an active partition
        # (the protective entry itself stays unmarked, as UEFI wants)
        assert head[0x1BE] == 0x00 and head[0x1CE] == 0x80
        assert head[512:520] == b"EFI PART"
        entries_lba, count, size = struct.unpack_from("<QII", head, 512 + 72)
        fh.seek(entries_lba * 512)
        table = fh.read(count * size)
        entries = [table[i * size:(i + 1) * size] for i in range(count)]
        esp = [e for e in entries if e[:16] == ESP_TYPE]
        assert len(esp) == 1, "no EFI system partition in the GPT"
        first, last = struct.unpack_from("<QQ", esp[0], 32)
        fh.seek(first * 512)
        fat = fh.read(512)
    assert fat[510:512] == b"\x55\xaa" and b"EFIBOOT" in fat[:90]
    assert (last + 1) * 512 <= iso_image.stat().st_size
    listing = subprocess.run(["mdir", "-b", "-i", f"{iso_image}@@{first * 512}", "::/EFI/BOOT"],
                             capture_output=True, text=True, check=True, env={"MTOOLS_SKIP_CHECK": "1"}).stdout
    assert "BOOTX64.EFI" in listing
    assert "grubx64.efi" in listing   # layers/server has Debian's signed shim and GRUB: Secure Boot by default


# --- the ISO, booted -------------------------------------------------------------------------------------

@pytest.mark.parametrize("medium, firmware, secure_boot", [
    ("cdrom", "bios", False), ("cdrom", "uefi", False), ("usb", "uefi", False),
    ("cdrom", "uefi", True), ("usb", "uefi", True),
], ids=["cdrom-bios", "cdrom-uefi", "usb-uefi", "cdrom-uefi-secure-boot", "usb-uefi-secure-boot"])
def test_iso_boots_live(iso_image, medium, firmware, secure_boot):
    fields = boot(iso_image, firmware=firmware, medium=medium, secure_boot=secure_boot)
    assert fields["root_fstype"] == "overlay"  # the squashfs under a writable overlay in RAM
    assert "boot=live" in fields["cmdline"] and "console=ttyS0,115200" in fields["cmdline"]
    assert fields["secure_boot"] == ("enabled" if secure_boot else "bios" if firmware == "bios" else "disabled")


# --- the KIS set ------------------------------------------------------------------------------------------

def test_kis_set_files(kis_dir):
    names = sorted(p.name for p in kis_dir.iterdir() if not p.name.endswith(".sha256"))
    assert names == ["manifest.json", "server.append", "server.grub-netboot.cfg", "server.initrd", "server.ipxe",
                     "server.kernel", "server.squashfs", "server.squashfs.cdx.json"]
    assert (kis_dir / "server.append").read_text().startswith("boot=live plainroot root=/dev/vda ")
    assert (kis_dir / "server.squashfs").read_bytes()[:4] == b"hsqs"


def test_kis_boots_by_direct_kernel_boot(kis_dir):
    fields = boot(kis_dir)
    assert fields["cmdline"] == (kis_dir / "server.append").read_text().strip()
    assert fields["root_fstype"] == "overlay"


@contextmanager
def http_server(directory: Path) -> Iterator[int]:
    """Serve a directory on an ephemeral port of the host's loopback; the guest reaches it at 10.0.2.2."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def boot_from_network(nic: str, work: Path, timeout: int = 900, accel: str | None = None) -> dict[str, str]:
    """Boot qemu from its network card (iPXE ROM) and wait for the boot-check report. A guest kernel panic
    under multi-threaded TCG gets one more boot with one TCG thread, as openos365 test does."""
    work.mkdir(parents=True, exist_ok=True)
    for used in ("report.txt", "console.log"):  # a retry must not read the previous boot's
        (work / used).unlink(missing_ok=True)
    accel = accel or qemu.accelerator()
    argv = ["qemu-system-x86_64", "-machine", "q35", "-accel", accel, "-m", "1536M", "-smp", "2",
            "-display", "none", "-no-reboot", "-nodefaults",
            "-chardev", f"file,id=console,path={work / 'console.log'}", "-serial", "chardev:console",
            "-device", "virtio-serial-pci", "-chardev", f"file,id=bootcheck,path={work / 'report.txt'}",
            "-device", f"virtserialport,chardev=bootcheck,name={qemu.PORT_NAME}",
            "-nic", nic, "-device", "virtio-rng-pci", "-boot", "n", *(["-cpu", "host"] if accel == "kvm" else [])]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            report = work / "report.txt"
            fields = qemu.parse_report(report.read_text(errors="replace") if report.exists() else "")
            if fields is not None:
                proc.wait(timeout=120)
                assert qemu.judge(fields, None) == [], fields
                return fields
            if proc.poll() is not None:
                break
            if qemu.kernel_panicked(console_of(work)) and accel == "tcg":
                proc.kill()
                proc.wait()
                return boot_from_network(nic, work, timeout, accel=qemu.ONE_TCG_THREAD)
            time.sleep(2)
        pytest.fail(f"no boot report (qemu exit {proc.poll()}); console:\n{console_of(work)[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def console_of(work: Path) -> str:
    """The guest's serial console so far; qemu creates the file only once it has started."""
    console = work / "console.log"
    return console.read_text(errors="replace") if console.exists() else ""


def _have_ipxe_rom() -> bool:
    return any(Path(d, "efi-virtio.rom").exists() for d in ("/usr/share/qemu", "/usr/lib/ipxe/qemu"))


@pytest.mark.skipif(not _have_ipxe_rom(), reason="needs qemu's iPXE ROMs (Debian: ipxe-qemu)")
def test_kis_boots_over_http_with_its_ipxe_script(kis_dir, tmp_path):
    web = tmp_path / "web"
    web.mkdir()
    for name in ("server.ipxe", "server.kernel", "server.initrd", "server.squashfs"):
        (web / name).symlink_to(kis_dir / name)
    with http_server(web) as port:
        base = f"http://{HOST}:{port}"
        (web / "start.ipxe").write_text(f"#!ipxe\nset base-url {base}\nchain ${{base-url}}/server.ipxe\n")
        fields = boot_from_network(f"user,model=virtio-net-pci,bootfile={base}/start.ipxe", tmp_path / "vm")
    assert f"fetch={base}/server.squashfs" in fields["cmdline"] and fields["root_fstype"] == "overlay"
    assert fields["hostname"] == "server"


@pytest.mark.skipif(not shutil.which("grub-mknetdir") or not Path("/usr/lib/grub/i386-pc").is_dir(),
                    reason="needs grub-mknetdir and the host's GRUB i386-pc modules (grub-pc-bin)")
@pytest.mark.skipif(not _have_ipxe_rom(), reason="needs qemu's iPXE ROMs (Debian: ipxe-qemu)")
def test_kis_boots_over_tftp_and_http_with_its_grub_entry(kis_dir, tmp_path):
    tftp = tmp_path / "tftp"
    subprocess.run(["grub-mknetdir", f"--net-directory={tftp}", "--subdir=boot/grub", "-d",
                    "/usr/lib/grub/i386-pc"], check=True, capture_output=True)
    (tftp / "openos365").mkdir()
    for name in ("server.kernel", "server.initrd", "server.grub-netboot.cfg"):
        shutil.copyfile(kis_dir / name, tftp / "openos365" / name)
    with http_server(kis_dir) as port:
        (tftp / "boot/grub/grub.cfg").write_text(
            "set timeout=1\nserial --unit=0 --speed=115200\nterminal_input serial console\n"
            "terminal_output serial console\n"
            f"set kis_url=http://{HOST}:{port}\nexport kis_url\nsource /openos365/server.grub-netboot.cfg\n")
        fields = boot_from_network(f"user,model=virtio-net-pci,tftp={tftp},bootfile=boot/grub/i386-pc/core.0",
                                   tmp_path / "vm")
    assert f"fetch=http://{HOST}:{port}/server.squashfs" in fields["cmdline"]
    assert fields["root_fstype"] == "overlay"


# --- reproducibility --------------------------------------------------------------------------------------

def test_same_image_and_options_give_the_same_iso_and_kis_bytes(server, iso_image, kis_dir, tmp_path):
    cli("export", "--to", "iso", server, "-o", str(tmp_path / "iso"), "--no-cache")
    assert sha256(tmp_path / "iso/server.iso") == sha256(iso_image)
    cli("export", "--to", "kis", server, "-o", str(tmp_path / "kis"), "--no-cache")
    for name in ("server.squashfs", "server.kernel", "server.initrd", "server.append", "server.ipxe",
                 "server.grub-netboot.cfg"):
        assert sha256(tmp_path / "kis" / name) == sha256(kis_dir / name), name
