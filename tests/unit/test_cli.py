"""The CLI as a user meets it: exit codes and messages for bad input, no traceback."""

import pytest

from tests.conftest import cli

from .test_config import make_layer


def test_unknown_format_lists_the_formats():
    result = cli("export", "--to", "floppy", "layers/server", check=False)
    assert result.returncode == 2
    assert "unknown output format '--to floppy'" in result.stderr
    assert "qcow2" in result.stderr and "Traceback" not in result.stderr


def test_bad_layer_yaml_names_file_and_key(tmp_path):
    layer = make_layer(tmp_path, "web", "parent: base\nexport:\n  sise: 4G\n")
    result = cli("export", "--to", "tar", str(layer), "-o", str(tmp_path / "out"), check=False)
    assert result.returncode == 2
    assert "layer.yaml: unknown key 'export.sise'" in result.stderr.replace("\n", "")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_dry_run_prints_the_plan_without_building(tmp_path):
    result = cli("export", "--to", "qcow2", "layers/server", "--dry-run", "-o", str(tmp_path / "out"))
    text = result.stderr
    assert "plan for --to qcow2" in text
    assert "mkfs.ext4 -d" in text and "qemu-img convert to qcow2" in text
    assert not (tmp_path / "out").exists()


def test_bad_size_option():
    result = cli("export", "--to", "raw", "layers/server", "--size", "huge", "--dry-run", check=False)
    assert result.returncode == 2
    assert "--size: 'huge' is not a size" in result.stderr


def test_missing_source_directory(tmp_path):
    result = cli("export", "--to", "tar", str(tmp_path), "-o", str(tmp_path / "o"), check=False)
    assert result.returncode != 0
    assert "not a layer" in result.stderr or "does not exist" in result.stderr


def test_version():
    assert cli("version").stdout.strip()


def test_unknown_engine(tmp_path):
    result = cli("build", "layers/base", "--engine", "rkt", check=False)
    assert result.returncode == 2
    assert "unknown engine 'rkt'" in result.stderr and "podman" in result.stderr


def test_no_engine_installed_says_what_to_install(tmp_path):
    result = cli("build", "layers/base", check=False, env={"PATH": str(tmp_path)})
    assert result.returncode == 3, result.stderr
    assert "no container engine found" in result.stderr
    assert "apt-get install podman" in result.stderr


def test_missing_tool_is_named_before_any_work(tmp_path):
    result = cli("export", "--to", "qcow2", "layers/server", "-o", str(tmp_path), check=False,
                 env={"PATH": str(tmp_path)})
    assert result.returncode == 3
    assert "--to qcow2 needs" in result.stderr and "apt-get install" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, expected", [
    (["pull", "x", "--tls-verify=false"], ["pull", "x", "--no-tls-verify"]),
    (["pull", "x", "--tls-verify=TRUE"], ["pull", "x", "--tls-verify"]),
    (["pull", "x", "--no-tls-verify"], ["pull", "x", "--no-tls-verify"]),
])
def test_podman_style_tls_flags_are_accepted(argv, expected):
    from openos365.cli import podman_style_flags

    assert podman_style_flags(argv) == expected


def test_a_tls_verify_value_that_is_not_a_boolean_is_refused():
    from openos365.cli import podman_style_flags
    from openos365.errors import UserError

    with pytest.raises(UserError, match="use true or false"):
        podman_style_flags(["pull", "x", "--tls-verify=maybe"])


def test_grub2_tool_names_are_found(tmp_path, monkeypatch):
    from openos365 import runner

    (tmp_path / "grub2-mkimage").write_text("#!/bin/sh\n")
    (tmp_path / "grub2-mkimage").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(runner.Path, "exists", lambda self: False)   # no /usr/sbin fallback
    assert runner.which("grub-mkimage") == str(tmp_path / "grub2-mkimage")


def test_shell_completion_scripts_and_format_names():
    for shell, marker in (("bash", "complete -o default -F _openos365_completion openos365"),
                          ("zsh", "#compdef openos365"), ("fish", "complete --command openos365")):
        assert marker in cli(env={"_OPENOS365_COMPLETE": f"source_{shell}"}).stdout   # what --show-completion prints
    env = {"_OPENOS365_COMPLETE": "complete_bash", "COMP_WORDS": "openos365 export --to qcow2,i", "COMP_CWORD": "3"}
    assert cli(env=env).stdout.split() == ["qcow2,iso", "qcow2,install-iso"]
    env = {**env, "COMP_WORDS": "openos365 export --t", "COMP_CWORD": "2"}
    assert {"--to", "--timezone", "--tls-verify"} <= set(cli(env=env).stdout.split())


def test_customization_mistakes_are_named_before_any_build(tmp_path):
    result = cli("export", "--to", "qcow2", "layers/server", "-o", str(tmp_path / "out"), "--user", "alice",
                 "--ssh-key", str(tmp_path / "a.pub"), check=False)
    assert result.returncode == 2 and "--ssh-key" in result.stderr and "no such file" in result.stderr
    result = cli("export", "--to", "qcow2", "layers/server", "-o", str(tmp_path / "out"),
                 "--copy", "relative:etc/x", check=False)
    assert result.returncode == 2 and "export.copy 'relative:etc/x' is not SRC:DEST" in result.stderr.replace("\n", "")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
