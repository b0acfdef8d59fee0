import pytest

from .harness import Client, WriterProcess


@pytest.fixture
def writer(tmp_path):
    w = WriterProcess(tmp_path)
    yield w
    w.close()


@pytest.fixture
def client(writer):
    c = Client(writer.endpoint)
    c.ok("ping", {})
    yield c
    c.close()
