"""A real HTTP server on 127.0.0.1 that is not a hub (a proxy, a login page), for the
tests of what clients do with answers that are not the hub's."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def answering(bodies: list[bytes]) -> Iterator[http.server.HTTPServer]:
    """A server answering each GET or POST with 200 and the next of ``bodies`` (the last
    one again once they are used up); its port is ``server.server_port``."""
    left = list(bodies)

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = left.pop(0) if len(left) > 1 else left[0]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer  # noqa: N815 - the stdlib's names

        def log_message(self, *args: object) -> None:
            pass
    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
