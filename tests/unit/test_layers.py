import pytest

from openos365.errors import UserError
from openos365.layers import all_layers, chain

from .test_config import make_layer


def test_chain_is_root_first(tmp_path):
    make_layer(tmp_path, "base", "from: localhost/x:1\n")
    make_layer(tmp_path, "server", "parent: base\n")
    top = make_layer(tmp_path, "web", "parent: server\n")
    assert [layer.name for layer in chain(top)] == ["base", "server", "web"]


def test_missing_parent(tmp_path):
    top = make_layer(tmp_path, "web", "parent: server\n")
    with pytest.raises(UserError, match="parent 'server' not found") as err:
        chain(top)
    assert "layers/server" in (err.value.hint or "")


def test_cycle(tmp_path):
    make_layer(tmp_path, "a", "parent: b\n")
    top = make_layer(tmp_path, "b", "parent: a\n")
    with pytest.raises(UserError, match="parent cycle b -> a -> b"):
        chain(top)


def test_not_a_directory(tmp_path):
    with pytest.raises(UserError, match="no such layer directory"):
        chain(tmp_path / "nope")


def test_all_layers_lists_the_repo_layers():
    from tests.conftest import REPO

    names = [layer.name for layer in all_layers(REPO / "layers")]
    assert {"base", "server"} <= set(names)
    server = next(layer for layer in all_layers(REPO / "layers") if layer.name == "server")
    assert server.parent == "base"
