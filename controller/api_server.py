"""The HTTP server the controller's API (:class:`controller.api.Api`) runs on.

The API is reachable from every UE container, so its server trusts no client's pace or count:

- **a read deadline**: the request line, the headers and the whole body must arrive within
  ``read_deadline_s`` of the connection being accepted, else the connection is cut (a client
  that trickles one byte at a time holds a thread for at most that long);
- **a body limit that cannot be bypassed**: ``Content-Length`` must be plain digits and at most
  ``controller.api.MAX_BODY``; the body is read here, in full, before the application runs;
- **connection caps**: at most ``max_connections`` open at once and ``per_client`` from one
  address; one more is answered ``503`` at once and closed (the policy's own connections
  come from ``trusted`` addresses, lab0's own, which no cap counts: a UE cannot starve them).

A long poll (``GET /assignment/<ue>?wait=S``) holds its connection after the request is read;
it counts against the caps like any other.
"""
from __future__ import annotations

import io
import json
import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from controller.api import MAX_BODY

DEFAULTS = {"read_deadline_s": 5.0, "max_connections": 256, "per_client": 32}


class ApiServer(ThreadingMixIn, WSGIServer):
    """Thread per connection, bounded (see the module docstring)."""
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, handler_class=None, *, read_deadline_s: float = DEFAULTS["read_deadline_s"],
                 max_connections: int = DEFAULTS["max_connections"], per_client: int = DEFAULTS["per_client"],
                 trusted: tuple[str, ...] = ()):
        self.read_deadline_s, self.max_connections, self.per_client = read_deadline_s, max_connections, per_client
        self.trusted = set(trusted)
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}          # client address -> connections open
        self.refused = 0                         # connections answered 503 (over a cap)
        super().__init__(address, handler_class or ApiRequestHandler)

    def open_connections(self) -> int:
        with self._lock:
            return sum(self._open.values())

    def process_request(self, request, client_address):
        ip = client_address[0]
        with self._lock:
            others = sum(v for k, v in self._open.items() if k not in self.trusted)
            over = ip not in self.trusted and (others >= self.max_connections
                                               or self._open.get(ip, 0) >= self.per_client)
            if not over:
                self._open[ip] = self._open.get(ip, 0) + 1
        if over:
            self.refused += 1
            try:
                body = json.dumps({"error": "too many connections; try again"}).encode()
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
                                + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            ip = client_address[0]
            with self._lock:
                self._open[ip] -= 1
                if not self._open[ip]:
                    del self._open[ip]


class ApiRequestHandler(WSGIRequestHandler):
    """Reads the whole request within the server's deadline, then runs the application."""

    def log_message(self, fmt, *args):   # one line per request would flood the log
        pass

    def _cut(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _refuse(self, status: int, reason: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status, reason)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def handle(self):
        timer = threading.Timer(self.server.read_deadline_s, self._cut)
        timer.daemon = True
        timer.start()
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline:
                return                              # cut at the deadline, or the client left
            if len(self.raw_requestline) > 65536:
                self.requestline, self.request_version, self.command = "", "", ""
                self.send_error(414)
                return
            if not self.parse_request():
                return
            length = self.headers.get("Content-Length")
            n = 0
            if length is not None:
                length = length.strip()
                if not length.isdigit() or not length.isascii():
                    return self._refuse(400, "Bad Request", f"bad Content-Length {length[:20]!r}: digits only")
                n = int(length)
                if n > MAX_BODY:
                    return self._refuse(413, "Payload Too Large",
                                        f"body of {n} bytes is over the {MAX_BODY}-byte limit")
            body = self.rfile.read(n) if n else b""
            if len(body) < n:
                return                              # cut at the deadline: nothing was done
            timer.cancel()                          # the request is in: a long poll may wait
            env = self.get_environ()
            env["CONTENT_LENGTH"] = str(n)
            handler = ServerHandler(io.BytesIO(body), self.wfile, self.get_stderr(), env, multithread=True)
            handler.request_handler = self
            handler.run(self.server.get_app())
        except (ConnectionError, socket.timeout, OSError):
            return
        finally:
            timer.cancel()


def make_api_server(host: str, port: int, app, trusted: tuple[str, ...] = (), **limits) -> ApiServer:
    """An :class:`ApiServer` on ``host:port`` serving the WSGI ``app``; ``limits`` as
    :data:`DEFAULTS` (None values fall back to them); ``trusted`` addresses are not capped."""
    kw = {k: (limits.get(k) if limits.get(k) is not None else v) for k, v in DEFAULTS.items()}
    server = ApiServer((host, port), ApiRequestHandler, trusted=tuple(trusted), **kw)
    server.set_app(app)
    return server
