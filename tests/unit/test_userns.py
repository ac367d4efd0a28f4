"""Rootless exports: when openos365 runs itself again in a user namespace, and what it says when it cannot."""

from __future__ import annotations

import pytest

from openos365 import userns
from openos365.errors import UserError


def test_uid_maps(tmp_path):
    host = tmp_path / "host"
    host.write_text("         0          0 4294967295\n")
    inner = tmp_path / "inner"
    inner.write_text("         0       1001          1\n         1     100000      65536\n")
    assert userns.uid_map(str(host)) == [(0, 0, 4294967295)]
    assert userns.uid_map(str(inner)) == [(0, 1001, 1), (1, 100000, 65536)]


@pytest.mark.parametrize(("argv", "wanted"), [
    (["export", "--to", "qcow2", "layers/server"], True),
    (["--workdir", "export", "export", "--to", "tar", "x"], True),   # a workdir named like the command
    (["--workdir", "wd", "inspect", "layers/server"], True),
    (["build", "layers/server"], False),                            # rootless podman builds by itself
    (["test", "out/server.qcow2"], False),
    (["--help"], False),
])
def test_which_commands_run_in_a_user_namespace(monkeypatch, argv, wanted):
    monkeypatch.setattr(userns.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(userns, "in_user_namespace", lambda: False)
    monkeypatch.delenv(userns.MARKER, raising=False)
    assert userns.wants_userns(argv) is wanted
    monkeypatch.setenv(userns.MARKER, "1")          # already inside: never again
    assert userns.wants_userns(argv) is False


def test_root_never_reexecs(monkeypatch):
    monkeypatch.setattr(userns.os, "geteuid", lambda: 0)
    assert userns.wants_userns(["export", "--to", "tar", "x"]) is False


def test_subordinate_ids_are_counted_by_name_or_uid(tmp_path):
    subuid = tmp_path / "subuid"
    subuid.write_text("alice:100000:65536\n1002:200000:1000\nbob:300000:65536\n1002:400000:70000\n")
    assert userns._subordinate(str(subuid), "alice", 1001) == 65536
    assert userns._subordinate(str(subuid), "carol", 1002) == 71000
    assert userns._subordinate(str(subuid), "dave", 1003) == 0


def test_missing_subordinate_ids_say_how_to_add_them(tmp_path, monkeypatch):
    (tmp_path / "subuid").write_text("")
    (tmp_path / "subgid").write_text("")
    monkeypatch.setattr(userns, "SUBID_FILES", (str(tmp_path / "subuid"), str(tmp_path / "subgid")))
    ready = userns.readiness()
    if ready.problem.startswith(("a rootless", "user namespaces", "newuidmap")):
        pytest.skip(f"this host cannot get as far as the subordinate ids: {ready.problem}")
    assert ready.engine is None and "subuid" in ready.problem
    assert "usermod --add-subuids" in ready.hint
    monkeypatch.setattr(userns, "readiness", lambda: ready)
    with pytest.raises(UserError, match="cannot be kept without it") as err:
        userns.reexec(["export", "--to", "qcow2", "layers/server"])
    assert "usermod" in (err.value.hint or "")


def test_no_engine_says_what_to_install(monkeypatch):
    monkeypatch.setattr(userns, "which", lambda tool: None)
    ready = userns.readiness()
    assert ready.engine is None and "podman" in ready.hint
