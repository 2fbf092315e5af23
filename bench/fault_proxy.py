"""A fault-injecting HTTP proxy for `make chaos`: it stands between the code and a real server
(an MLflow tracking server) and, for a share of requests, answers 503, drops the connection
before forwarding (the request never reaches the server), or forwards and then drops the answer
(the server did it, the client never hears); `down(True)` drops every request, as a server that
is away for minutes. It counts each fault it injected, so a run can set them against the faults
the code reported.

    python -m bench.fault_proxy UPSTREAM_URL [--port 0] [--unavailable 0.05] [--drop 0.03]
        [--drop-answer 0.02] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "content-length", "host"}


class FaultProxy:
    """Forward to `upstream` on 127.0.0.1:`port` (0: a free one), injecting faults by share."""

    def __init__(self, upstream: str, port: int = 0, unavailable: float = 0.05,
                 drop: float = 0.03, drop_answer: float = 0.02, seed: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.shares = {"unavailable": unavailable, "dropped": drop, "answer_dropped": drop_answer}
        self.counts: Counter[str] = Counter()
        self._rng, self._lock, self._down = random.Random(seed), threading.Lock(), False
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        threading.Thread(target=self._server.serve_forever, name="fault-proxy",
                         daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def down(self, away: bool) -> None:
        """Away (every request dropped, counted as `down`) until called with False."""
        self._down = away

    def injected(self) -> int:
        return sum(n for kind, n in self.counts.items() if kind != "requests")

    def _fault(self) -> str | None:
        with self._lock:
            self.counts["requests"] += 1
            if self._down:
                self.counts["down"] += 1
                return "down"
            draw, edge = self._rng.random(), 0.0
            for kind, share in self.shares.items():
                edge += share
                if draw < edge:
                    self.counts[kind] += 1
                    return kind
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet: the counts say what happened
                pass

            def _drop(self) -> None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self) -> None:
                import httpx

                body = self._body()
                fault = proxy._fault()
                if fault in ("down", "dropped"):
                    return self._drop()
                if fault == "unavailable":
                    self.send_response(503, "Service Unavailable (fault injected)")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                try:
                    answer = httpx.request(self.command, proxy.upstream + self.path,
                                           headers=headers, content=body, timeout=120)
                except httpx.HTTPError:
                    return self._drop()  # the upstream itself is away: so is the proxy
                if fault == "answer_dropped":
                    return self._drop()
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in HOP_BY_HOP | {"content-encoding"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer.content)
                return None

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("upstream")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--unavailable", type=float, default=0.05)
    parser.add_argument("--drop", type=float, default=0.03)
    parser.add_argument("--drop-answer", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    proxy = FaultProxy(args.upstream, args.port, args.unavailable, args.drop, args.drop_answer,
                       args.seed).start()
    print(f"fault proxy {proxy.url} -> {proxy.upstream}; Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(60)
            print(dict(proxy.counts), flush=True)
    except KeyboardInterrupt:
        proxy.stop()


if __name__ == "__main__":
    main()
