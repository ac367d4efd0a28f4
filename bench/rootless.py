"""Root and rootless exports of the same image, side by side: time of each and their ratio.

    python bench/rootless.py [--user NAME]

Run as root. NAME (default openos365-ci, the user tests/integration/test_rootless.py makes) must have
subordinate ids and a venv at ~/venv with openos365 installed from ~/openos365 (the test sets both up).
Both sides export the same image: root saves localhost/openos365/server:latest as an OCI archive that the
user's export reads, so both flatten the same layers (root with tarapply as host root, the user inside
podman's user namespace). Each side starts from an empty tree cache.
"""

from __future__ import annotations

import argparse
import pwd
import shutil
import subprocess

from common import cleanup, openos365, ratio, scratch, sh, timed

REF = "localhost/openos365/server:latest"


def as_user(user: str, command: str) -> None:
    result = subprocess.run(["su", "-", user, "-c", command], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"as {user}: {command} failed:\n{result.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--user", default="openos365-ci")
    args = parser.parse_args()
    home = pwd.getpwnam(args.user).pw_dir
    work = scratch()
    shared = f"{home}/bench-server.oci.tar"
    print("bench/rootless.py: --to qcow2 of the same image, empty tree caches")
    try:
        openos365("build", "layers/server")
        sh("podman", "save", "--format", "oci-archive", "-o", shared, REF)
        shutil.chown(shared, args.user)
        source = f"oci-archive:{shared}"
        root = timed("as root", lambda: openos365("export", "--to", "qcow2", source, "-o", str(work / "out"),
                                                  workdir=work / "wd"))
        rootless = timed(f"as {args.user} (podman unshare)", lambda: as_user(
            args.user, f"rm -rf ~/bench-wd ~/bench-out && cd ~/openos365 && ~/venv/bin/openos365 --workdir "
            f"~/bench-wd export --to qcow2 {source} -o ~/bench-out"))
        ratio("rootless / root", rootless, root)
    finally:
        cleanup(work)
        as_user(args.user, "rm -rf ~/bench-wd ~/bench-out ~/bench-server.oci.tar")


if __name__ == "__main__":
    main()
