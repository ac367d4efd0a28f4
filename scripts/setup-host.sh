#!/usr/bin/env bash
# Set up a Debian 12 host for openos365: system tools (apt) and the Python package in .venv.
# Idempotent. Needs root (apt-get). Used by the README, the Justfile and CI alike.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
APT_PACKAGES=(
  # engines and base images
  podman buildah skopeo uidmap fuse-overlayfs crun mmdebstrap
  # docker's engine: dockerd with runc and containerd (Debian's 20.10, whose CLI has BuildKit built in); the
  # tests start a dockerd of their own, and podman keeps crun
  docker.io
  # disks, filesystems, boot loaders, conversions (e2fsprogs comes from backports below)
  fdisk dosfstools mtools grub-common grub-pc-bin grub-efi-amd64-bin qemu-utils
  # live ISO and KIS
  squashfs-tools erofs-utils xorriso
  # compression and archives
  zstd xz-utils gzip tar
  # --password-file hashes the password on the host
  openssl
  # boot tests and the local test registry
  qemu-system-x86 ovmf docker-registry
  # --arch arm64: builds run arm64 binaries through qemu-user (binfmt_misc), mmdebstrap checks with arch-test;
  # arm64 artifacts boot under qemu-system-aarch64 with its UEFI (AAVMF)
  qemu-user-static binfmt-support arch-test qemu-system-arm qemu-efi-aarch64
  # ssh-keygen: the cloud boot test makes the key its user-data installs
  openssh-client
  # python
  python3-venv python3-pip
)

run_as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# e2fsprogs >= 1.47.1 makes ext4 images byte-reproducible; Debian 12 has it in bookworm-backports.
if . /etc/os-release && [ "${VERSION_CODENAME:-}" = bookworm ]; then
  if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    run_as_root tee /etc/apt/sources.list.d/openos365-backports.sources >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  E2FS_TARGET=(-t bookworm-backports)
else
  E2FS_TARGET=()
fi

run_as_root apt-get update -q
run_as_root apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}"
run_as_root apt-get install -y -q --no-install-recommends "${E2FS_TARGET[@]}" e2fsprogs

# Foreign binaries in builds: binfmt_misc mounted and qemu-user registered (with the F flag, so it works in a
# build's chroot). Containers and CI machines often start with neither; doctor says when this is missing.
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  run_as_root mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || echo "binfmt_misc: cannot mount (--arch arm64 builds will not work here)"
fi
if [ -e /proc/sys/fs/binfmt_misc/status ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  run_as_root update-binfmts --enable qemu-aarch64 || echo "binfmt_misc: cannot register qemu-aarch64"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[dev]'
.venv/bin/openos365 doctor
