"""make chaos's fault proxy injects what it says and counts it: passes requests through
untouched, answers 503, drops a request before the server sees it, drops the answer after the
server acted, and drops everything while down."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from bench.fault_proxy import FaultProxy


@pytest.fixture
def upstream():
    """An echo server that records what reached it."""
    reached = []

    class Echo(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            reached.append((self.path, body))
            self.send_response(201)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", reached
    server.shutdown()


def proxied(url: str, **shares) -> FaultProxy:
    return FaultProxy(url, **{"unavailable": 0, "drop": 0, "drop_answer": 0, **shares}).start()


def test_requests_pass_through_untouched(upstream):
    url, reached = upstream
    proxy = proxied(url)
    answer = httpx.post(proxy.url + "/api/2.0/x?a=1", content=b"\x00body" * 1000)
    assert (answer.status_code, answer.content) == (201, b"\x00body" * 1000)
    assert reached == [("/api/2.0/x?a=1", b"\x00body" * 1000)]
    assert proxy.counts["requests"] == 1 and proxy.injected() == 0
    proxy.stop()


@pytest.mark.parametrize(("share", "reaches_server"), [("unavailable", False), ("drop", False),
                                                       ("drop_answer", True)])
def test_each_fault_is_what_it_says_and_is_counted(upstream, share, reaches_server):
    url, reached = upstream
    proxy = proxied(url, **{share: 1.0})
    if share == "unavailable":
        assert httpx.post(proxy.url + "/x", content=b"b").status_code == 503
    else:
        with pytest.raises(httpx.TransportError):
            httpx.post(proxy.url + "/x", content=b"b")
    assert bool(reached) is reaches_server
    assert proxy.injected() == 1
    proxy.stop()


def test_down_drops_everything_until_up_again(upstream):
    url, reached = upstream
    proxy = proxied(url)
    proxy.down(True)
    for _ in range(3):
        with pytest.raises(httpx.TransportError):
            httpx.post(proxy.url + "/x", content=b"b")
    proxy.down(False)
    assert httpx.post(proxy.url + "/x", content=b"b").status_code == 201
    assert proxy.counts["down"] == 3 and len(reached) == 1
    proxy.stop()
