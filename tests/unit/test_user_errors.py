"""No tracebacks for anything a user can cause: one line naming the file, key or step, a hint, a non-zero exit."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from openos365 import build, cli, log
from openos365.config import ExportOptions, LayerConfig, artifact_name_from, load_layer
from openos365.engine import base as engine_base
from openos365.engine import docker as docker_mod
from openos365.engine import podman as podman_mod
from openos365.engine.base import BuildRequest, check_ref
from openos365.errors import CommandError, UserError
from openos365.runner import Result
from tests.conftest import cli as run_cli

from .test_config import make_layer


def assert_user_error(result, *names: str) -> None:
    """A one-line error naming each of names, a hint, a non-zero exit and no traceback."""
    text = result.stderr
    assert result.returncode != 0, text
    assert "Traceback" not in text, text
    assert "hint:" in text, text
    error_line = next(line for line in text.splitlines() if line.startswith("error:"))
    for name in names:
        assert name in error_line, (name, text)


def export(layer: Path, tmp_path: Path, *extra: str):
    return run_cli("export", "--to", "tar", str(layer), "-o", str(tmp_path / "out"), *extra, check=False)


# 1. the output directory


def test_output_that_is_a_file(tmp_path):
    target = tmp_path / "artifact.tar"
    target.write_text("not a directory")
    result = run_cli("export", "--to", "tar", "layers/server", "-o", str(target), check=False)
    assert_user_error(result, str(target), "is a file, not a directory")
    assert "choose a directory" in result.stderr
    assert target.read_text() == "not a directory"


def test_output_where_nothing_can_be_created(tmp_path):
    result = run_cli("export", "--to", "tar", "layers/server", "-o", "/proc/openos365-x", check=False)
    assert_user_error(result, "/proc/openos365-x", "cannot write there")


def test_output_inside_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    result = run_cli("export", "--to", "tar", "layers/server", "-o", str(tmp_path / "f" / "out"), check=False)
    assert_user_error(result, str(tmp_path / "f" / "out"), "cannot write there")


@pytest.mark.skipif(os.geteuid() == 0, reason="permission bits do not stop root")
def test_output_in_a_read_only_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = run_cli("export", "--to", "tar", "layers/server", "-o", str(locked / "out"), check=False)
    assert_user_error(result, str(locked / "out"), "cannot write there")


# 2. and 3. layer.yaml that is not YAML, or empty


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    layer = make_layer(tmp_path, "web", "parent: base\nexport:\n  size: 4G\n    firmware: bios\n")
    result = export(layer, tmp_path)
    assert_user_error(result, f"{layer / 'layer.yaml'}:4:13:", "not valid YAML")


def test_unclosed_bracket_says_where_it_was_opened(tmp_path):
    layer = make_layer(tmp_path, "web", "description: x\nparent: [base\n")
    result = export(layer, tmp_path)
    assert_user_error(result, f"{layer / 'layer.yaml'}:3:1:", "starts at 2:9")


def test_yaml_error_path_is_relative_under_the_current_directory(tmp_path):
    make_layer(tmp_path, "web", "parent: 'base\n")
    result = run_cli("export", "--to", "tar", "layers/web", "-o", "out", check=False, cwd=tmp_path)
    assert_user_error(result, "layers/web/layer.yaml:")
    assert str(tmp_path) not in result.stderr.splitlines()[0]


@pytest.mark.parametrize("text", ["", "# only a comment\n\n", "---\n"])
def test_empty_layer_yaml_says_what_it_needs(tmp_path, text):
    layer = make_layer(tmp_path, "web", text)
    result = export(layer, tmp_path)
    assert_user_error(result, str(layer / "layer.yaml"), "is empty")
    assert "parent: LAYER" in result.stderr and "from: IMAGE" in result.stderr


def test_layer_yaml_that_is_a_list(tmp_path):
    result = export(make_layer(tmp_path, "web", "- parent: base\n"), tmp_path)
    assert_user_error(result, "must be a mapping")


# 4. keys and values of the wrong kind


def test_unknown_export_key_is_named_with_its_section(tmp_path):
    result = export(make_layer(tmp_path, "web", "parent: base\nexport:\n  hostnme: a\n"), tmp_path)
    assert_user_error(result, "unknown key 'export.hostnme'")
    assert "hostname" in result.stderr


@pytest.mark.parametrize("yaml_text,named", [
    ("export: [a, b]\n", "'export' must be a dict"),
    ("export: yes\n", "'export' must be a dict"),
    ("tags: [latest, 2]\n", "'tags[1]' must be a str"),
    ("tags: [{a: 1}]\n", "'tags[0]' must be a str"),
    ("tags: ['-x']\n", "tags[0]: '-x' is not a valid tag"),
    ("tags: {a: 1}\n", "'tags' must be a list"),
    ("build_args: {A: [1]}\n", "'build_args.A' must be"),
    ("build_args: {PARENT: x}\n", "build_args.PARENT"),
    ("image: [x]\n", "'image' must be a str"),
    ("image: Upper/Case\n", "image: 'Upper/Case' is not a valid image name"),
    ("export:\n  size: {a: 1}\n", "'export.size' must be"),
    ("export:\n  size: [4G]\n", "'export.size' must be"),
    ("export:\n  size: true\n", "'export.size' must be"),
    ("export:\n  size: 1.5\n", "'export.size' must be"),
    ("export:\n  size: -3\n", "export.size: -3 is not a size"),
    ("export:\n  size: 0G\n", "export.size: '0G' is not more than 0 bytes"),
    ("export:\n  hostname: true\n", "'export.hostname' must be"),
    ("export:\n  hostname:\n", "'export.hostname' has no value"),
    ("export:\n  firmware: [bios]\n", "'export.firmware' must be"),
    ("export:\n  kernel_cmdline: {a: 1}\n", "'export.kernel_cmdline' must be"),
    ("export:\n  publisher: false\n", "'export.publisher' must be"),
    ("export:\n  name: null\n", "'export.name' has no value"),
])
def test_values_of_the_wrong_kind_name_the_key(tmp_path, yaml_text, named):
    result = export(make_layer(tmp_path, "web", f"parent: base\n{yaml_text}"), tmp_path)
    assert_user_error(result, "layer.yaml", named)


@pytest.mark.parametrize("yaml_text,named", [
    ("parent: ../../etc\n", "parent: '../../etc' is not valid"),
    ("from: --privileged\n", "from: '--privileged' starts with '-'"),
    ("from: 'a b'\n", "contains white space"),
    ("from: debian\nbootstrap: ../x\n", "bootstrap: '../x' is not valid"),
])
def test_parent_from_and_bootstrap_are_checked(tmp_path, yaml_text, named):
    result = export(make_layer(tmp_path, "web", yaml_text), tmp_path)
    assert_user_error(result, "layer.yaml", named)


def test_every_export_key_accepts_a_plain_value(tmp_path):
    layer = load_layer(make_layer(tmp_path, "web", "parent: base\ntags: [latest, v1.2]\nbuild_args: {N: 3}\n"
                                  "export:\n  size: 4G\n  label: 2024\n  kernel_cmdline: quiet\n"))
    assert layer.tags == ("latest", "v1.2") and layer.build_args == {"N": "3"}
    assert layer.export.size == 4 << 30 and layer.export.label == "2024"


# 7. kernel command lines that could write boot loader entries


@pytest.mark.parametrize("cmdline", ["quiet\nmenuentry 'evil' {", 'quiet" evil', "a; chain http://x/y", "a $x",
                                     "a\tb", "a `id`", "a'b", "a\rb", "a{b}"])
def test_kernel_cmdline_injection_is_refused(cmdline):
    with pytest.raises(UserError, match="export.kernel_cmdline contains") as err:
        ExportOptions().merged({"kernel_cmdline": cmdline})
    assert "\n" not in err.value.message
    assert "letters, digits, space" in (err.value.hint or "")


def test_ordinary_kernel_parameters_pass():
    cmdline = ("console=ttyS0,115200n8 systemd.unit=rescue.target rd.break=pre-mount ip=dhcp isolcpus=1-3 "
               "log_buf_len=1M root=/dev/disk/by-label/ROOT quiet nfsroot=10.0.0.1:/srv/x,vers=4 a+b@c%d~e")
    assert ExportOptions().merged({"kernel_cmdline": cmdline}).kernel_cmdline == cmdline


def test_kernel_cmdline_option_is_refused_on_the_command_line(tmp_path):
    result = run_cli("export", "--to", "tar", "layers/server", "--dry-run", "--kernel-cmdline",
                     "quiet\nmenuentry x {", check=False)
    assert_user_error(result, "kernel_cmdline", "'\\n'")


def test_kernel_cmdline_in_layer_yaml_is_refused(tmp_path):
    layer = make_layer(tmp_path, "web", "parent: base\nexport:\n  kernel_cmdline: 'quiet\" --id x'\n")
    result = export(layer, tmp_path)
    assert_user_error(result, "layer.yaml", "export.kernel_cmdline", "'\"'")


# 8. artifact names made from archive file names and image references


@pytest.mark.parametrize("text,name", [("server", "server"), ("My Image", "my-image"), ("Debian_12", "debian_12"),
                                       ("..hidden", "hidden"), ("-x", "x"), ("a/b", "a-b"), ("!!!", "image"),
                                       ("ünïcode", "n-code")])
def test_artifact_names_are_made_valid(text, name):
    made = artifact_name_from(text)
    assert made == name
    ExportOptions().merged({"name": made})


def test_names_from_image_references_are_valid():
    from openos365.sources import name_from_ref

    assert name_from_ref("docker.io/Team/My_App:1.0") == "my_app"
    assert name_from_ref("localhost/openos365/server@sha256:ab") == "server"


def test_dry_run_of_an_odd_reference_uses_a_valid_name():
    result = run_cli("export", "--to", "tar", "docker://example.com/team/My App:1", "--dry-run", check=False)
    assert result.returncode == 0, result.stderr
    assert "my-app" in result.stderr and "--name" in result.stderr


# 10. what reaches cli.main unexpectedly


def run_main(monkeypatch, capsys, exc: BaseException, verbose: bool = False) -> tuple[int, str]:
    def app(**_: object) -> None:
        raise exc

    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setitem(log._state, "verbose", verbose)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return int(exit_info.value.code or 0), capsys.readouterr().err


def test_a_bug_is_one_line_without_verbose(monkeypatch, capsys):
    code, err = run_main(monkeypatch, capsys, KeyError("kernel"))
    assert code == 1
    assert "error: internal error: KeyError: 'kernel'" in err
    assert "hint: rerun with --verbose for the traceback and report it" in err
    assert "Traceback" not in err


def test_a_bug_shows_its_traceback_with_verbose(monkeypatch, capsys):
    code, err = run_main(monkeypatch, capsys, ZeroDivisionError("division by zero"), verbose=True)
    assert code == 1
    assert "Traceback (most recent call last)" in err and "internal error: ZeroDivisionError" in err


def test_os_error_names_the_path(monkeypatch, capsys):
    code, err = run_main(monkeypatch, capsys, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/srv/out/x.raw"))
    assert code == 1
    assert f"error: {os.strerror(errno.ENOSPC)}: /srv/out/x.raw" in err
    assert "hint: free some space" in err and "Traceback" not in err


def test_os_error_from_the_command_line(tmp_path):
    for tool in ("podman", "mmdebstrap"):
        (tmp_path / tool).write_text("#!/bin/sh\nexit 0\n")
        (tmp_path / tool).chmod(0o755)
    result = run_cli("--workdir", "/proc/openos365-x", "bootstrap", check=False, env={"PATH": str(tmp_path)})
    assert_user_error(result, "/proc/openos365-x")


def test_layers_of_a_missing_directory(tmp_path):
    result = run_cli("layers", str(tmp_path / "nowhere"), check=False)
    assert_user_error(result, str(tmp_path / "nowhere"), "no such directory")


# 5. a failing RUN step names the layer, the step and the exit status


class Recorder:
    """Stands in for runner.run: records argv, plays build output lines, fails when told to."""

    def __init__(self, lines: tuple[str, ...] = (), fail: int | None = None, tail: tuple[str, ...] = ()):
        self.calls: list[list[str]] = []
        self.lines, self.fail, self.tail = lines, fail, list(tail)

    def __call__(self, argv, *, on_line=None, **_: object) -> Result:
        argv = [str(a) for a in argv]
        self.calls.append(argv)
        for line in self.lines:
            if on_line is not None:
                on_line(line)
        if self.fail is not None:
            raise CommandError(argv, self.fail, self.tail)
        return Result(argv, 0, _fake_stdout(argv), [])

    def succeeds(self, argv) -> bool:
        self.calls.append([str(a) for a in argv])
        return True


def _fake_stdout(argv: list[str]) -> str:
    if "inspect" in argv:
        created = "2024-01-01T00:00:00Z"
        if argv[0] == "buildah":
            return json.dumps({"FromImageID": "ab", "OCIv1": {"created": created}})
        return json.dumps([{"Id": "sha256:ab", "Created": created}])
    if argv[:2] == ["docker", "version"]:
        return json.dumps({"Client": {"Version": "20.10.24"}, "Server": {"Version": "20.10.24"}})
    return "cid\n" if argv[:2] == ["buildah", "from"] else "/mnt/x\n"


def web_layer(tmp_path: Path) -> LayerConfig:
    return load_layer(make_layer(tmp_path, "web", "parent: base\n"))


PODMAN_RUN_FAILS = ("STEP 1/3: FROM ab", "STEP 2/3: RUN true", "--> 123", "STEP 3/3: RUN exit 3",
                    "subprocess exited with status 3", 'Error: building at STEP "RUN exit 3": exit status 3')


@pytest.mark.parametrize("engine_cls", [podman_mod.Podman, podman_mod.Buildah])
def test_failed_run_step_in_podman_names_layer_step_and_status(tmp_path, monkeypatch, engine_cls):
    monkeypatch.setenv("OPENOS365_ISOLATION", "chroot")
    monkeypatch.setattr(podman_mod, "run", Recorder(PODMAN_RUN_FAILS, fail=3, tail=PODMAN_RUN_FAILS))
    layer = web_layer(tmp_path)
    with pytest.raises(CommandError) as err:
        build.build_one(layer, "ab", engine_cls(), cache_from=None, cache_to=None, no_cache=False)
    message = err.value.message
    assert message.startswith("layer web: ")
    assert str(layer.containerfile) in message
    assert "STEP 3/3: RUN exit 3 failed with exit status 3" in message
    assert "\n" not in message and err.value.hint and err.value.tail[-1].startswith("Error: building")


@pytest.mark.parametrize("lines", [
    ("Step 1/2 : FROM ab", "Step 2/2 : RUN exit 3", "The command '/bin/sh -c exit 3' returned a non-zero code: 3"),
    ("#5 [1/2] FROM ab", "#6 [2/2] RUN exit 3", "#6 ERROR: process \"/bin/sh -c exit 3\" did not complete",
     "------", " > [2/2] RUN exit 3:", "------",
     'ERROR: failed to solve: process "/bin/sh -c exit 3" did not complete successfully: exit code: 3'),
])
def test_failed_run_step_in_docker_names_layer_step_and_status(tmp_path, monkeypatch, lines):
    monkeypatch.setattr(docker_mod.Docker, "setup",
                        lambda self: docker_mod.DockerSetup("28.2.2", "20.10.24", lines[0].startswith("#")))
    monkeypatch.setattr(docker_mod, "run", Recorder(lines, fail=1, tail=lines))
    with pytest.raises(CommandError) as err:
        build.build_one(web_layer(tmp_path), "ab", docker_mod.Docker(), cache_from=None, cache_to=None,
                        no_cache=False)
    assert err.value.message.startswith("layer web: ")
    assert "STEP 2/2: RUN exit 3 failed with exit status 3" in err.value.message


def test_a_build_that_fails_before_any_step(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENOS365_ISOLATION", "chroot")
    tail = ("Error: parsing Containerfile: unknown instruction: RUNN",)
    monkeypatch.setattr(podman_mod, "run", Recorder(tail, fail=125, tail=tail))
    with pytest.raises(CommandError, match=r"layer web: .*Containerfile: the build failed with exit status 125"):
        build.build_one(web_layer(tmp_path), "ab", podman_mod.Podman(), cache_from=None, cache_to=None,
                        no_cache=False)


# 6. a `from:` image that is neither local nor pullable


@pytest.mark.parametrize("tail,reason", [
    (('Error: short-name "nosuch" did not resolve to an alias',), 'short-name "nosuch" did not resolve'),
    (("Error: initializing source docker://nosuch:latest: reading manifest latest: manifest unknown",),
     "the registry has no such image"),
    ((), "exit status 125"),
])
def test_missing_from_image(tmp_path, monkeypatch, tail, reason):
    recorder = Recorder(fail=125, tail=tail)
    monkeypatch.setattr(podman_mod, "run", recorder)
    monkeypatch.setattr(podman_mod, "succeeds", lambda argv: False)
    layer = load_layer(make_layer(tmp_path, "web", "from: nosuch\n"))
    with pytest.raises(UserError) as err:
        build.ensure_base_image(layer, podman_mod.Podman(), workdir=tmp_path)
    assert err.value.message.startswith(f"{layer.directory / 'layer.yaml'}: from: nosuch does not exist locally "
                                        "and could not be pulled (")
    assert reason in err.value.message and "\n" not in err.value.message
    assert "bootstrap" in (err.value.hint or "")
    assert recorder.calls[0][:2] == ["podman", "pull"]


# 9. image references never reach an engine as options


ENGINES = [podman_mod.Podman, podman_mod.Buildah, docker_mod.Docker]
REF = "registry.example:5000/team/app:1"


def engine_calls(engine, tmp_path, ref=REF):
    """Every engine method that takes an image reference, called with ref."""
    return {
        "exists": lambda: engine.exists(ref),
        "inspect": lambda: engine.inspect(ref),
        "require": lambda: engine.require(ref),
        "tag": lambda: engine.tag(ref, "localhost/x:1"),
        "tag target": lambda: engine.tag("localhost/x:1", ref),
        "save": lambda: engine.save(ref, tmp_path / "a.tar", "oci-archive", name=None),
        "save docker": lambda: engine.save(ref, tmp_path / "a.tar", "docker-archive", name=None),
        "save as": lambda: engine.save("localhost/x:1", tmp_path / "a.tar", "oci-archive", name=ref),
        "import": lambda: engine.import_tarball(tmp_path / "a.tar", ref, ["CMD [\"/bin/sh\"]"]),
        "pull": lambda: engine.pull(ref),
        "push": lambda: engine.push(ref, "registry.example/other:2"),
        "push dest": lambda: engine.push("localhost/x:1", ref),
        "mount": lambda: engine.mounted(ref).__enter__(),
    }


def _patch(monkeypatch, recorder: Recorder) -> None:
    for module in (podman_mod, docker_mod):
        monkeypatch.setattr(module, "run", recorder)
        monkeypatch.setattr(module, "succeeds", recorder.succeeds)
    monkeypatch.setattr(engine_base, "run", recorder)
    monkeypatch.setattr(podman_mod.os, "geteuid", lambda: 0)


@pytest.mark.parametrize("engine_cls", ENGINES)
@pytest.mark.parametrize("method", list(engine_calls(None, Path("/")).keys()))
def test_references_come_after_double_dash(tmp_path, monkeypatch, engine_cls, method):
    recorder = Recorder()
    _patch(monkeypatch, recorder)
    engine_calls(engine_cls(), tmp_path)[method]()
    with_ref = [argv for argv in recorder.calls if any(arg.endswith(REF) for arg in argv)]
    if engine_cls is docker_mod.Docker and method == "mount":
        assert recorder.calls == []  # docker cannot mount images: the tree comes from a saved archive
        return
    assert with_ref, recorder.calls
    for argv in with_ref:
        position = next(i for i, arg in enumerate(argv) if arg.endswith(REF))
        assert "--" in argv[:position], argv


@pytest.mark.parametrize("engine_cls", ENGINES)
@pytest.mark.parametrize("method", list(engine_calls(None, Path("/")).keys()))
@pytest.mark.parametrize("bad", ["--privileged", "-v/:/host", "", "a b"])
def test_references_that_could_be_options_are_refused(tmp_path, monkeypatch, engine_cls, method, bad):
    if method == "save as" and not bad:
        pytest.skip("an empty name means: save under the reference itself")
    recorder = Recorder()
    _patch(monkeypatch, recorder)
    with pytest.raises(UserError, match="image reference"):
        engine_calls(engine_cls(), tmp_path, bad)[method]()
    assert recorder.calls == []


@pytest.mark.parametrize("engine_cls", ENGINES)
def test_build_context_comes_after_double_dash(tmp_path, monkeypatch, engine_cls):
    monkeypatch.setenv("OPENOS365_ISOLATION", "chroot")
    recorder = Recorder()
    _patch(monkeypatch, recorder)
    context = tmp_path / "-ctx"
    request = BuildRequest(containerfile=context / "Containerfile", context=context, tags=["localhost/x:1"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "read_text", lambda self: "sha256:ab")
        engine_cls().build(request)
    argv = recorder.calls[-1]
    assert argv[-2:] == ["--", str(context)]


def test_check_ref_passes_ordinary_references():
    for ref in ("debian", "docker.io/library/debian:bookworm", "localhost:5000/a/b@sha256:" + "0" * 64, "ab12"):
        assert check_ref(ref) == ref


def test_pull_command_refuses_an_option_as_reference(tmp_path):
    (tmp_path / "podman").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "podman").chmod(0o755)
    result = run_cli("pull", "--", "--privileged", check=False, env={"PATH": str(tmp_path)})
    assert_user_error(result, "'--privileged' starts with '-'")


# bootstrap recipes get the same checks as layer.yaml


@pytest.mark.parametrize("text,named", [
    ("", "is empty"),
    ("image: x\nsuite: [bookworm\n", "bootstrap.yaml:3:1: not valid YAML"),
    ("image: x\nsuite: bookworm\ncomponents: main\n", "'components' must be a list of strings"),
    ("image: x\nsuite: 12\n", "'suite' must be a string"),
    ("image: x\nsuite: --help\n", "suite: '--help' is not valid"),
    ("image: -x\nsuite: bookworm\n", "image: '-x' starts with '-'"),
    ("suite: bookworm\n", "'image' is required"),
])
def test_bad_bootstrap_recipe(tmp_path, text, named):
    (tmp_path / "bootstrap.yaml").write_text(text)
    with pytest.raises(UserError, match=named) as err:
        build.load_recipe(tmp_path)
    assert str(tmp_path / "bootstrap.yaml") in err.value.message and err.value.hint


def test_the_shipped_recipe_loads():
    recipe = build.load_recipe(Path(__file__).resolve().parents[2] / "Containerfiles/debian-bookworm")
    assert recipe.image == "localhost/openos365/debian:bookworm" and "systemd" in recipe.include


# 10. a transient failure of chroot isolation is retried once, and only that one

MEMFD_RACE = ("STEP 5/12: RUN apt-get update", "Close_Fd sealing memfd copy: Device or resource busy",
              "subprocess exited with status 1", 'Error: building at STEP "RUN apt-get update": exit status 1')


@pytest.mark.parametrize("failures,tail,builds", [
    (1, MEMFD_RACE, 2),              # retried, then built
    (2, MEMFD_RACE, 2),              # retried once only: the second failure is the user's
    (1, PODMAN_RUN_FAILS, 1),        # a failing step is never retried
])
def test_the_memfd_race_of_chroot_builds_is_retried_once(tmp_path, monkeypatch, failures, tail, builds):
    monkeypatch.setenv("OPENOS365_ISOLATION", "chroot")
    calls: list[list[str]] = []

    def fake_run(argv, **kwargs):
        calls.append(argv)
        if len(calls) <= failures:
            raise CommandError(argv, 1, list(tail))
        iidfile = next(a for a in argv if a.startswith("--iidfile=")).split("=", 1)[1]
        Path(iidfile).write_text("sha256:ab\n")

    monkeypatch.setattr(podman_mod, "run", fake_run)
    request = BuildRequest(containerfile=tmp_path / "Containerfile", context=tmp_path, tags=["x"])
    if failures < builds:
        assert podman_mod.Podman().build(request) == "ab"
    else:
        with pytest.raises(CommandError):
            podman_mod.Podman().build(request)
    assert len(calls) == builds


# 11. docker: registry and cache options are honoured or refused, never dropped

def test_docker_refuses_what_its_cli_cannot_do_and_honours_an_auth_file(tmp_path, monkeypatch):
    calls: list[tuple[list[str], dict[str, str] | None, str | None]] = []

    def fake_run(argv, **kwargs):
        env = kwargs.get("env")
        config = Path(env["DOCKER_CONFIG"]) / "config.json" if env else None
        calls.append((argv, env, config.read_text() if config else None))
        return Result(argv, 0, "", [])

    monkeypatch.setattr(docker_mod, "run", fake_run)
    docker = docker_mod.Docker()
    with pytest.raises(UserError) as err:
        docker.pull("127.0.0.1:5000/os/base:1", tls_verify=False)
    assert "insecure-registries" in (err.value.hint or "") and '"127.0.0.1:5000"' in (err.value.hint or "")
    auth = tmp_path / "auth.json"
    auth.write_text('{"auths": {"127.0.0.1:5000": {"auth": "dTpw"}}}')
    docker.pull("127.0.0.1:5000/os/base:1", authfile=str(auth))
    argv, env, config = calls[-1]
    assert argv[:2] == ["docker", "pull"] and config == auth.read_text()
    assert not Path(env["DOCKER_CONFIG"]).exists()        # the temporary client config is gone again
    with pytest.raises(UserError, match="no such file"):
        docker.push("a", "127.0.0.1:5000/os/a:1", authfile=str(tmp_path / "missing.json"))
    request = BuildRequest(containerfile=tmp_path / "Containerfile", context=tmp_path, tags=["x"],
                           cache_to="127.0.0.1:5000/cache")
    with pytest.raises(UserError, match="cannot write a build cache to a registry"):
        docker._build_argv(request, "iid")
    request = BuildRequest(containerfile=tmp_path / "Containerfile", context=tmp_path, tags=["x"],
                           cache_from="127.0.0.1:5000/cache")
    assert "--cache-from=127.0.0.1:5000/cache" in docker._build_argv(request, "iid")


def test_docker_children_name_their_parent_by_a_tag_buildkit_resolves_locally(monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr(docker_mod, "run", lambda argv, **kwargs: calls.append(argv) or Result(argv, 0, "", []))
    parent = docker_mod.Docker().parent_arg("ab" * 32, "localhost/openos365/base")
    assert parent == "localhost/openos365/base:" + ("ab" * 6)
    assert calls == [["docker", "tag", "--", "ab" * 32, parent]]
    assert podman_mod.Podman().parent_arg("ab" * 32, "localhost/openos365/base") == "ab" * 32
