"""Reading a WSL root-tree tarball as the system inside sees it, and the rules WSL and Microsoft's validator set
for one (shared by the amd64 export tests and the arm64 ones)."""

from __future__ import annotations

import configparser
import stat
import tarfile
from pathlib import Path

ELF_MACHINES = {"amd64": 62, "arm64": 183}


class TarTree:
    """Look up paths in a root-tree tar the way the system inside sees them (symlinks followed in-root)."""

    def __init__(self, path: Path):
        self.tar = tarfile.open(path)
        self.members = {m.name.removeprefix("./").rstrip("/"): m for m in self.tar.getmembers()}

    def get(self, path: str, follow: bool = True) -> tarfile.TarInfo | None:
        todo, done, hops = [p for p in path.split("/") if p], [], 0
        while todo:
            part = todo.pop(0)
            if part == "..":
                done = done[:-1]
                continue
            member = self.members.get("/".join([*done, part]))
            if member is not None and member.issym() and (todo or follow) and hops < 40:
                hops += 1
                done = [] if member.linkname.startswith("/") else done
                todo = [p for p in member.linkname.split("/") if p and p != "."] + todo
                continue
            done.append(part)
        return self.members.get("/".join(done))

    def read(self, path: str) -> bytes:
        member = self.get(path)
        assert member is not None and member.isfile(), path
        return self.tar.extractfile(member).read()   # type: ignore[union-attr]


def check_wsl_rules(tree: TarTree, name: str, arch: str = "amd64") -> None:
    names = list(tree.members)
    for prefix in ("boot/", "usr/lib/modules/", "usr/lib/grub/", "etc/repart.d/"):
        assert not [n for n in names if n.startswith(prefix) or n == prefix.rstrip("/")], prefix
    assert not [n for n in names if n.split("/")[-1].startswith(("vmlinuz", "initrd.img"))]
    assert not [m.name for m in tree.members.values() if m.ischr() or m.isblk()]
    assert not [n for n in names if n.startswith("etc/ssh/ssh_host_")]
    for gone in ("etc/hostname", "etc/resolv.conf", "etc/systemd/system/openos365-boot-check.service"):
        assert gone not in tree.members, gone
    for rel, mode in (("etc/wsl.conf", 0o644), ("etc/wsl-distribution.conf", 0o644), ("usr/lib/wsl/oobe.sh", 0o755),
                      ("usr/lib/wsl/openos365.ico", 0o644), ("usr/lib/wsl/terminal-profile.json", 0o640)):
        member = tree.members[rel]
        assert (stat.S_IMODE(member.mode), member.uid, member.gid) == (mode, 0, 0), rel
    conf = configparser.ConfigParser()
    conf.read_string(tree.read("etc/wsl.conf").decode())
    assert conf["boot"]["systemd"] == "true"
    dist = configparser.ConfigParser()
    dist.read_string(tree.read("etc/wsl-distribution.conf").decode())
    assert dict(dist["oobe"]) == {"command": "/usr/lib/wsl/oobe.sh", "defaultuid": "1000", "defaultname": name}
    assert dict(dist["shortcut"]) == {"enabled": "true", "icon": "/usr/lib/wsl/openos365.ico"}
    assert dict(dist["windowsterminal"]) == {"profiletemplate": "/usr/lib/wsl/terminal-profile.json"}
    for program in ("bin/sh", "bin/bash", "sbin/init"):   # the validator checks these by architecture
        assert tree.read(program)[:4] == b"\x7fELF", program
        assert elf_machine(tree, program) == ELF_MACHINES[arch], program
    machine_id = tree.members["etc/machine-id"]
    assert machine_id.isfile() and machine_id.size == 0
    assert tree.members["etc/systemd/system/systemd-networkd.service"].linkname == "/dev/null"
    fstab = tree.read("etc/fstab").decode()
    assert all(not line.strip() or line.startswith("#") for line in fstab.splitlines())


def elf_machine(tree: TarTree, path: str) -> int:
    """e_machine of the ELF file at path (little-endian, as on both architectures)."""
    return int.from_bytes(tree.read(path)[18:20], "little")
