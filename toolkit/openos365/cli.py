"""Thin typer commands. Domain errors become messages and exit codes here and nowhere else."""

from __future__ import annotations

import errno
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

from . import __version__, log, userns
from .errors import CommandError, OpenOSError, UserError

app = typer.Typer(add_completion=True, no_args_is_help=True, rich_markup_mode=None,
                  help="Turn OCI container images into OS images: disks, live ISOs, KIS, WSL, archives.")

_state: dict[str, object] = {}

EngineOpt = Annotated[str | None, typer.Option("--engine", help="podman | buildah | docker (default: detect)")]
TlsOpt = Annotated[bool, typer.Option("--tls-verify/--no-tls-verify", help="verify the registry's TLS")]
BaseOpt = Annotated[str | None, typer.Option("--base", help="build the layer tree on this base recipe "
                                             "(Containerfiles/RECIPE, e.g. debian-bookworm); images are tagged "
                                             "with its release (server:bookworm)")]
ArchOpt = Annotated[str | None, typer.Option("--arch", help="amd64 | arm64 (or x86_64, aarch64; default: the "
                                             "host's); another architecture builds through qemu-user, and its "
                                             "images and artifacts carry its name (server:arm64)")]
AuthOpt = Annotated[str | None, typer.Option("--authfile", help="engine auth file (default: the engine's)")]


def workdir() -> Path:
    return Path(str(_state.get("workdir") or os.environ.get("OPENOS365_WORKDIR") or ".openos365")).resolve()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show every command and its output")] = False,
    json_events: Annotated[bool, typer.Option("--json", help="progress as JSON lines on stderr")] = False,
    work: Annotated[Path | None, typer.Option("--workdir", help="cache and scratch space "
                                                 "(default: ./.openos365 or $OPENOS365_WORKDIR)")] = None,
) -> None:
    log.configure(verbose=verbose, json_events=json_events)
    _state["workdir"] = work


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


@app.command()
def bootstrap(
    recipe: Annotated[str, typer.Argument(help="a recipe under Containerfiles/ (e.g. debian-trixie) or its path")]
    = "debian-trixie",
    engine: EngineOpt = None,
    arch: ArchOpt = None,
) -> None:
    """Make a base image from a distribution archive (mmdebstrap -> OCI image); no registry needed."""
    from . import arch as arches
    from . import build, tools
    from .engine import detect

    tools.require(["mmdebstrap"], purpose="bootstrap")
    path = Path(recipe) if Path(recipe).is_dir() else Path("Containerfiles") / recipe
    image_id = build.bootstrap(path, detect(engine), workdir=workdir(), arch=arches.get(arch) if arch else None)
    log.done(f"bootstrapped sha256:{image_id}")


@app.command("build")
def build_cmd(
    layer: Annotated[Path, typer.Argument(help="layer directory, e.g. layers/server")],
    engine: EngineOpt = None,
    cache_registry: Annotated[str | None, typer.Option(help="registry repository shared as a layer cache "
                                                          "(--cache-from and --cache-to)")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="rebuild every step")] = False,
    base: BaseOpt = None,
    arch: ArchOpt = None,
) -> None:
    """Build a layer and its parents (parents first; unchanged layers are cache hits)."""
    from .build import build_layer_chain
    from .engine import detect

    built = build_layer_chain(layer, detect(engine), cache_from=cache_registry, cache_to=cache_registry,
                              no_cache=no_cache, workdir=workdir(), base=base, arch=arch)
    log.done(f"built {built.ref} sha256:{built.info.id}")


@app.command()
def layers(root: Annotated[Path, typer.Argument(help="the layers directory")] = Path("layers"),
           engine: EngineOpt = None) -> None:
    """Show the layer tree: parent, image, and whether it is built."""
    from rich.markup import escape
    from rich.tree import Tree

    from .engine import detect
    from .layers import all_layers

    found = all_layers(root)
    eng = detect(engine)
    nodes: dict[str | None, Tree] = {}
    top = Tree(str(root))
    pending = list(found)
    while pending:
        progressed = False
        for layer in list(pending):
            if layer.parent is None or layer.parent in nodes:
                parent_node = nodes.get(layer.parent, top)
                built = "built" if eng.exists(layer.ref) else "not built"
                origin = f" from {layer.base_image}" if layer.base_image else ""
                nodes[layer.name] = parent_node.add(escape(f"{layer.name}: {layer.ref} [{built}]{origin}"))
                pending.remove(layer)
                progressed = True
        if not progressed:
            for layer in pending:
                top.add(escape(f"{layer.name}: parent '{layer.parent}' missing or in a cycle"))
            break
    log.console.print(top)


def _formats_help() -> str:
    from .exporters import EXPORTERS

    return ", ".join(EXPORTERS)


def _complete_formats(incomplete: str) -> list[str]:
    """Shell completion of --to: the formats, also after a comma (--to qcow2,i<TAB>)."""
    from .exporters import EXPORTERS

    done, _, last = incomplete.rpartition(",")
    prefix = f"{done}," if done else ""
    return [f"{prefix}{fmt}" for fmt in EXPORTERS if fmt.startswith(last) and fmt not in done.split(",")]


def _absolute_copy(text: str) -> str:
    """--copy SRC:DEST with SRC made absolute: the export may run elsewhere (a user namespace, a config's dir)."""
    source, sep, dest = text.rpartition(":")
    return f"{Path(source).absolute()}{sep}{dest}" if sep and source and dest.startswith("/") else text


@app.command()
def export(
    source: Annotated[str | None, typer.Argument(help="layer dir, image ref, docker://REF, oci-archive:FILE, ... "
                                                 "(or the config's source:)")] = None,
    to: Annotated[str | None, typer.Option("--to", "-t", help=_formats_help() + "; several: --to qcow2,iso,wsl "
                                           "(default with -c: the config's formats)",
                                           autocompletion=_complete_formats)] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="export config (YAML): source, output, "
                                                "defaults and the formats with their own options; flags win")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="output directory [default: out, or the "
                                                "config's output:]")] = None,
    name: Annotated[str | None, typer.Option(help="artifact base name (default: layer name)")] = None,
    size: Annotated[str | None, typer.Option(help="disk size, e.g. 4G (default: content + headroom)")] = None,
    firmware: Annotated[str | None, typer.Option(help="bios | uefi | both")] = None,
    secure_boot: Annotated[str | None, typer.Option(help="UEFI through the image's signed shim and GRUB: auto (when "
                                                    "the image has them) | on | off")] = None,
    kernel_cmdline: Annotated[str | None, typer.Option(help="extra kernel command line")] = None,
    hostname: Annotated[str | None, typer.Option(help="host name of the system")] = None,
    user: Annotated[list[str] | None, typer.Option(help="create this user, NAME or NAME:GROUP,GROUP (sudo rights); "
                                                  "repeat for more users")] = None,
    ssh_key: Annotated[list[Path] | None, typer.Option(help="public key file: the first for the first --user, the "
                                                       "second for the second, ... (root's when no --user)")] = None,
    password_file: Annotated[Path | None, typer.Option(help="file whose first line becomes the password of the "
                                                       "--user(s), or root's (hashed here, never stored)")] = None,
    timezone: Annotated[str | None, typer.Option(help="time zone, e.g. Europe/Berlin")] = None,
    locale: Annotated[str | None, typer.Option(help="LANG, e.g. C.UTF-8 (others must be generated in the image)")
                      ] = None,
    keymap: Annotated[str | None, typer.Option(help="console keymap (and X layout), e.g. de or de-nodeadkeys")] = None,
    copy: Annotated[list[str] | None, typer.Option(help="SRC:DEST copy a host file or directory into the image "
                                                   "(root-owned); repeat for more")] = None,
    compression: Annotated[str | None, typer.Option(help="zstd | xz | gzip | none")] = None,
    rootfs: Annotated[str | None, typer.Option(help="KIS root filesystem: squashfs | ext4 | erofs")] = None,
    label: Annotated[str | None, typer.Option(help="ISO volume label")] = None,
    publisher: Annotated[str | None, typer.Option(help="ISO publisher field")] = None,
    wsl_format: Annotated[str | None, typer.Option(help="tar.gz | wsl")] = None,
    unattended: Annotated[bool, typer.Option("--unattended", help="install ISO: install without asking for a "
                                             "confirmation (an ambiguous target disk is still refused)")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan, build nothing")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="make the artifact anew, even when an earlier "
                                           "export of the same image with the same options can be reused")] = False,
    engine: EngineOpt = None,
    tls_verify: TlsOpt = True,
    base: BaseOpt = None,
    arch: ArchOpt = None,
) -> None:
    """Export an image to an artifact: `openos365 export --to qcow2 layers/server`; several formats from one
    flatten: `--to qcow2,iso,wsl` or `-c release.yaml`."""
    from .config import parse_size
    from .export import run_exports

    overrides = {
        "size": parse_size(size, where="--size") if size else None, "firmware": firmware,
        "secure_boot": secure_boot, "kernel_cmdline": kernel_cmdline, "hostname": hostname, "user": user,
        "ssh_key": [str(key.absolute()) for key in ssh_key or []],
        "password_file": str(password_file.absolute()) if password_file else None, "timezone": timezone,
        "locale": locale, "keymap": keymap, "copy": [_absolute_copy(text) for text in copy or []],
        "compression": compression, "rootfs": rootfs,
        "label": label, "publisher": publisher, "wsl_format": wsl_format, "name": name,
        "unattended": unattended or None,
    }
    run_exports(source, to, config, output, overrides, dry_run=dry_run, engine_name=engine, workdir=workdir(),
                tls_verify=tls_verify, no_cache=no_cache, base=base, arch=arch)


@app.command()
def test(
    artifact: Annotated[Path, typer.Argument(help="a disk image, an ISO, or a KIS directory/.append file")],
    firmware: Annotated[str, typer.Option(help="bios | uefi (arm64: always uefi)")] = "bios",
    as_: Annotated[str | None, typer.Option("--as", help="ISO medium: cdrom | usb | disk")] = None,
    grow: Annotated[str | None, typer.Option(help="boot a copy enlarged by this much (e.g. 2G) and check "
                                                "that root grew")] = None,
    timeout: Annotated[int, typer.Option(help="seconds to wait for the boot")] = 600,
    memory: Annotated[str, typer.Option(help="guest memory")] = "1536M",
    boots: Annotated[int, typer.Option(min=1, help="boot the same disk this many times (later boots must change "
                                       "nothing)")] = 1,
    secure_boot: Annotated[bool, typer.Option("--secure-boot", help="UEFI firmware with Microsoft's keys, Secure "
                                              "Boot enforcing; fails unless the system reports it enabled "
                                              "(implies --firmware uefi)")] = False,
    install_onto: Annotated[str | None, typer.Option(help="install ISO: boot it with blank disks of this size "
                                                     "(e.g. 4G), wait for the install, then boot the installed "
                                                     "disk alone and check that root grew")] = None,
    install_disks: Annotated[int, typer.Option(min=1, help="how many blank disks --install-onto attaches")] = 1,
    cloud_init: Annotated[Path | None, typer.Option("--cloud-init", metavar="USER-DATA", help="attach a NoCloud "
                                                    "seed (cidata ISO) with this user-data; fails unless "
                                                    "cloud-init reports done without errors")] = None,
    cloud_meta_data: Annotated[Path | None, typer.Option("--cloud-meta-data", metavar="FILE", help="the seed's "
                                                         "meta-data (default: an instance-id and a "
                                                         "local-hostname from the artifact's name)")] = None,
    screenshot: Annotated[Path | None, typer.Option(help="save what the screen shows once the system is up "
                                                    "(PNG; the VM gets a display, and stays up until it is taken)")]
    = None,
    arch: Annotated[str | None, typer.Option("--arch", help="the artifact's architecture (default: what "
                                             "manifest.json beside it says, else amd64)")] = None,
) -> None:
    """Boot an artifact under qemu (KVM when it works, else TCG) and check it reports a good boot."""
    from . import screen
    from .config import parse_size
    from .qemu import BootRequest, boot_test

    if secure_boot and firmware == "bios":
        firmware = "uefi"
    report = boot_test(BootRequest(artifact=artifact, firmware=firmware, medium=as_, secure_boot=secure_boot,
                                   grow=parse_size(grow, where="--grow") if grow else None,
                                   timeout=timeout, memory=memory, workdir=workdir(), boots=boots,
                                   install_onto=parse_size(install_onto, where="--install-onto") if install_onto
                                   else None, install_disks=install_disks,
                                   cloud_init=cloud_init, cloud_meta_data=cloud_meta_data,
                                   screenshot=screen.destination(screenshot) if screenshot else None,
                                   arch=arch))
    for key, value in report.fields.items():   # what the booted system said, for --verbose and --json
        log.note(f"report: {key}={value}")
    log.done(report.summary())
    if screenshot and report.screen:
        log.done(f"screenshot {screenshot} ({report.screen[0]}x{report.screen[1]})")


@app.command()
def doctor() -> None:
    """List the host tools each command needs, what is missing, and the package that provides it."""
    from .doctor import run_doctor

    if not run_doctor():
        raise typer.Exit(1)


@app.command()
def pull(ref: Annotated[str, typer.Argument(help="image reference, e.g. 127.0.0.1:5000/openos365/base:latest")],
         engine: EngineOpt = None, tls_verify: TlsOpt = True, authfile: AuthOpt = None,
         arch: ArchOpt = None) -> None:
    """Pull an image into the engine's store (from a multi-architecture index: the host's, or --arch)."""
    from . import arch as arches
    from .engine import detect

    eng = detect(engine)
    eng.pull(ref.removeprefix("docker://"), tls_verify=tls_verify, authfile=authfile,
             arch=arches.get(arch).name if arch else None)
    info = eng.inspect(ref.removeprefix("docker://"))
    log.done(f"pulled {ref} sha256:{info.id}" + (f" ({info.architecture})" if info.architecture else ""))


@app.command()
def push(
    source: Annotated[str, typer.Argument(help="layer dir (built first) or local image ref")],
    targets: Annotated[list[str], typer.Argument(help="one or more host/repo:tag")],
    engine: EngineOpt = None, tls_verify: TlsOpt = True, authfile: AuthOpt = None,
) -> None:
    """Push an image (building a layer chain first) to one or more registries."""
    from .sources import resolve_image

    ref, eng, _, _ = resolve_image(source, engine_name=engine, workdir=workdir(), pull=False)
    for target in targets:
        eng.push(ref, target.removeprefix("docker://"), tls_verify=tls_verify, authfile=authfile)
        log.info(f"pushed {target}")
    log.done(f"pushed {ref} to {len(targets)} target(s)")


@app.command()
def inspect(source: Annotated[str, typer.Argument(help="layer dir or image ref")], engine: EngineOpt = None) -> None:
    """Print what openos365 finds in an image: kernel, initrd, boot loader files, live support."""
    import json

    from .boot import describe_tree
    from .sources import resolve

    src = resolve(source, engine_name=engine, workdir=workdir())
    print(json.dumps({"image_id": src.image_id, "name": src.name, **describe_tree(src.tree)}, indent=2))


def podman_style_flags(argv: list[str]) -> list[str]:
    """`--tls-verify=false|true`, as podman, buildah and skopeo spell it, as this CLI's switch pair."""
    out = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        if name == "--tls-verify" and sep:
            if value.lower() not in ("true", "false", "1", "0"):
                raise UserError(f"--tls-verify={value}: use true or false", hint="e.g. --tls-verify=false")
            arg = "--tls-verify" if value.lower() in ("true", "1") else "--no-tls-verify"
        out.append(arg)
    return out


def main() -> None:
    try:
        sys.argv[1:] = podman_style_flags(sys.argv[1:])
        if userns.wants_userns(sys.argv[1:]):
            sys.exit(userns.reexec(sys.argv[1:]))
        app(standalone_mode=False, prog_name="openos365")
    except OpenOSError as exc:
        _report(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        log.console.print("[red]interrupted[/red]")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        # usage errors of the CLI framework (typer vendors click: match by behaviour, not by import)
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":
            sys.exit(1)
        _report_unexpected(exc)
        sys.exit(1)


_OS_HINTS = {
    errno.ENOSPC: "free some space there, or choose another place (-o, --workdir)",
    errno.EACCES: "check the permissions of that path, or choose another place (-o, --workdir)",
    errno.EPERM: "check the permissions of that path, or choose another place (-o, --workdir)",
    errno.EROFS: "that file system is read-only; choose another place (-o, --workdir)",
    errno.ENOENT: "check that the path exists",
}


def _report_unexpected(exc: Exception) -> None:
    """An OSError is about a path or the system (no space, no permission); anything else is a bug. Either
    way one line says what happened; the traceback, which helps a bug report, is for --verbose."""
    if log.is_verbose():
        traceback.print_exception(exc)
    if isinstance(exc, OSError):
        paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
        text = (exc.strerror or str(exc) or type(exc).__name__) + (f": {paths}" if paths else "")
        hint = _OS_HINTS.get(exc.errno or 0, "rerun with --verbose for the traceback")
    else:
        text = f"internal error: {type(exc).__name__}: {exc}"
        hint = "rerun with --verbose for the traceback and report it"
    _report(OpenOSError(" ".join(text.split()), hint=hint))


def _report(exc: OpenOSError) -> None:
    from rich.markup import escape

    log.console.print(f"[bold red]error:[/bold red] {escape(exc.message)}", highlight=False)
    if isinstance(exc, CommandError) and exc.tail:
        log.console.print("[dim]last lines of its output:[/dim]")
        for line in exc.tail[-15:]:
            log.console.out(f"  {line}", highlight=False)
    if exc.hint:
        log.console.print(f"[bold]hint:[/bold] {escape(exc.hint)}", highlight=False)


if __name__ == "__main__":
    main()
