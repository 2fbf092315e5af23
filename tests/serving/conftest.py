import pytest

from tests.serving.served import STARTED


@pytest.fixture(autouse=True)
def no_server_left_behind():
    """A test that failed half-way leaves no model server running (its port, its CPU)."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait()
