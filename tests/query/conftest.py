"""Fixtures for the query tests (helpers live in qhelpers.py)."""
import pytest

from .qhelpers import make_root, start_server


@pytest.fixture
def root(tmp_path):
    return make_root(tmp_path)


@pytest.fixture(scope="module")
def module_root(tmp_path_factory):
    return make_root(tmp_path_factory.mktemp("qroot"))


@pytest.fixture(scope="module")
def server(module_root):
    s = start_server(module_root)
    yield s
    s.stop()


@pytest.fixture
def fresh_server(root):
    servers = []

    def start(*extra, env=None):
        s = start_server(root, *extra, env=env)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()
