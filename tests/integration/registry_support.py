"""Helpers for the registry and container-export tests: a throw-away registry, separate image stores.

- Registry: Debian's docker-registry on 127.0.0.1 and a free port, storage in a temp dir, optional
  htpasswd auth; started and stopped by the fixture that uses it.
- Store: a second, empty image store for the engine. podman (and skopeo) honour CONTAINERS_STORAGE_CONF,
  so the tool under test runs unchanged with another --root/--runroot; the generated registries.conf
  marks the test registries `insecure` (plain HTTP), the engine's own way to configure TLS.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bcrypt_line(user: str, password: str) -> str:
    """htpasswd line (the registry accepts bcrypt only); glibc's libxcrypt makes $2b$ hashes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    return f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n"


def authfile(path: Path, host: str, user: str, password: str) -> Path:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(f'{{"auths": {{"{host}": {{"auth": "{token}"}}}}}}\n')
    return path


@dataclass
class Registry:
    directory: Path
    users: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def config(self) -> str:
        auth = ""
        if self.users:
            (self.directory / "htpasswd").write_text("".join(bcrypt_line(u, p) for u, p in self.users.items()))
            auth = f"auth:\n  htpasswd:\n    realm: openos365-test\n    path: {self.directory / 'htpasswd'}\n"
        return (f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: "
                f"{self.directory / 'data'}\n  delete:\n    enabled: true\nhttp:\n  addr: {self.host}\n"
                f"  secret: openos365-test\n{auth}")

    def start(self) -> Registry:
        binary = shutil.which("docker-registry")
        if binary is None:
            pytest.skip("needs Debian's docker-registry package")
        self.port = free_port()
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "config.yml").write_text(self.config())
        log = open(self.directory / "registry.log", "wb")
        self.process = subprocess.Popen([binary, "serve", str(self.directory / "config.yml")], stdout=log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2)
                return self
            except urllib.error.HTTPError:      # 401 with auth: it answers
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"docker-registry did not start: {(self.directory / 'registry.log').read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def running_registry(directory: Path, users: dict[str, str] | None = None) -> Iterator[Registry]:
    registry = Registry(directory, users or {}).start()
    try:
        yield registry
    finally:
        registry.stop()


@dataclass
class Store:
    """A separate, initially empty podman image store (graphroot/runroot under `directory`)."""

    directory: Path
    insecure: list[str]

    @property
    def env(self) -> dict[str, str]:
        return {"CONTAINERS_STORAGE_CONF": str(self.directory / "storage.conf"),
                "CONTAINERS_REGISTRIES_CONF": str(self.directory / "registries.conf"),
                "OPENOS365_ISOLATION": "chroot"}

    def create(self) -> Store:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{self.directory / "root"}"\n'
            f'runroot = "{self.directory / "run"}"\n')
        registries = "".join(f'[[registry]]\nlocation = "{host}"\ninsecure = true\n\n' for host in self.insecure)
        (self.directory / "registries.conf").write_text(f"unqualified-search-registries = []\n\n{registries}")
        return self

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["podman", *args], env={**os.environ, **self.env}, capture_output=True, text=True,
                                check=False, timeout=1800)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}: {result.stderr[-3000:]}")
        return result

    def image_id(self, ref: str) -> str:
        return self.podman("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()

    def remove(self) -> None:
        self.podman("rm", "--all", "--force", check=False)
        self.podman("rmi", "--all", "--force", check=False)
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def empty_store(directory: Path, insecure: list[str]) -> Iterator[Store]:
    store = Store(directory, insecure).create()
    try:
        yield store
    finally:
        store.remove()


def tiny_rootfs(path: Path) -> Path:
    """A ~2 MB root tree tar: the host's dash as /bin/sh and the C library it needs. Enough for RUN steps."""
    files = {"usr/bin/sh": "/usr/bin/dash", "usr/lib/x86_64-linux-gnu/libc.so.6": "/lib/x86_64-linux-gnu/libc.so.6",
             "usr/lib64/ld-linux-x86-64.so.2": "/lib64/ld-linux-x86-64.so.2"}
    with tarfile.open(path, "w") as tar:
        for directory in ("usr", "usr/bin", "usr/lib", "usr/lib/x86_64-linux-gnu", "usr/lib64", "etc", "tmp"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
        for name, source in files.items():
            info = tar.gettarinfo(os.path.realpath(source), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(source, "rb") as fh:
                tar.addfile(info, fh)
        passwd = b"root:x:0:0:root:/root:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size, info.mode = len(passwd), 0o644
        tar.addfile(info, io.BytesIO(passwd))
    return path
