"""The explorer's HTTP server (standard library ``ThreadingHTTPServer``), bound to 127.0.0.1 by default.

It serves nothing from the file system by path. The only resources are::

    GET  /  (or /index.html)     the page
    GET  /api/column?name=NAME   {"name": NAME, "values": [...]}: a colour column in run order
    GET  /api/volume.png?i=POS   PNG: central sections of the map at the latent of run particle POS (0-based)
    POST /api/export             {"name": NAME or null, "indices": [input indices]} -> RUN/explore_selections/NAME/

Anything else is 404; paths with ``..``, backslashes, encoded characters or a second leading slash are 403; other
methods 405. Bound to a loopback address, the server also refuses a Host header naming another host (DNS
rebinding) and a cross-origin POST. The export is the only write. Errors are JSON ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from cryoscape.errors import CryoscapeError
from cryoscape.explore.export import SelectionExists, export_selection, validate_selection_indices
from cryoscape.explore.page import build_page, compact_floats
from cryoscape.explore.thumbnails import VolumeThumbnails

log = logging.getLogger("cryoscape")

__all__ = ["ExplorerServer", "make_server"]

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_CSP = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
        "img-src 'self' data: blob:; connect-src 'self'; font-src data:; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'none'")


class _HTTPError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ExplorerServer(ThreadingHTTPServer):
    """A threading HTTP server holding the explorer's data, page and thumbnail maker.

    Parameters
    ----------
    data : ExplorerData
        What to show (see :func:`cryoscape.explore.data.load_explorer_data`).
    host : str
        Address to bind (default loopback ``127.0.0.1``).
    port : int
        Port (0: a free one, see :attr:`port`).
    device : str
        Torch device for generating maps.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, data, host: str = "127.0.0.1", port: int = 0, device: str = "auto"):
        self.data = data
        self.page = build_page(data, server=True).encode("utf-8")
        self.thumbnails = VolumeThumbnails(data.run_dir, data.epoch, device=device)
        self.export_lock = threading.Lock()
        self.loopback = host in _LOOPBACK
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, int(port)), ExplorerHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host = str(self.server_address[0])  # a str for AF_INET/AF_INET6
        return f"http://[{host}]:{self.port}/" if ":" in host else f"http://{host}:{self.port}/"

    def allowed_hosts(self) -> set[str]:
        """Host header values accepted on a loopback server."""
        return {f"{h}:{self.port}" for h in ("127.0.0.1", "localhost", "[::1]")}

    def max_post_bytes(self) -> int:
        """Largest accepted export body: every particle of the run as a 20-digit index, plus room for the name."""
        return 4096 + 22 * self.data.n


def make_server(data, host: str = "127.0.0.1", port: int = 0, device: str = "auto") -> ExplorerServer:
    """An :class:`ExplorerServer` bound to ``host:port``, ready for ``serve_forever()``."""
    return ExplorerServer(data, host=host, port=port, device=device)


class ExplorerHandler(BaseHTTPRequestHandler):
    """Answers the explorer page's requests only."""

    server: ExplorerServer
    server_version = "cryoscape-explore"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        log.debug("explore: %s %s", self.address_string(), format % args)

    # ------------------------------------------------------------------------------------------------ replies
    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        if content_type.startswith("text/html"):
            self.send_header("Content-Security-Policy", _CSP)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: HTTPStatus, obj) -> None:
        self._send(status, json.dumps(obj, allow_nan=False).encode("utf-8"), "application/json")

    def _fail(self, status: HTTPStatus, message: str) -> None:
        self._json(status, {"error": message})

    # ------------------------------------------------------------------------------------------------ checks
    def _route(self) -> tuple[str, dict]:
        """The request's path and query, after refusing traversal, encoded and absolute forms."""
        raw = self.path
        if not raw.startswith("/") or raw.startswith("//"):
            raise _HTTPError(HTTPStatus.FORBIDDEN, "only relative paths of this server are served")
        parts = urlsplit(raw)
        path = parts.path
        decoded = unquote(unquote(path))
        if "%" in path or ".." in decoded or "\\" in decoded or "\x00" in decoded or "//" in decoded:
            raise _HTTPError(HTTPStatus.FORBIDDEN, "this path is not served")
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1 or (self.server.loopback and hosts[0] not in self.server.allowed_hosts()):
            raise _HTTPError(HTTPStatus.FORBIDDEN, "unexpected Host header")
        return path, parse_qs(parts.query, keep_blank_values=True)

    @staticmethod
    def _param(query: dict, name: str) -> str:
        values = query.get(name)
        if not values or len(values) != 1:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, f"give exactly one '{name}' parameter")
        return values[0]

    def _handle(self, method) -> None:
        try:
            method()
        except _HTTPError as exc:
            self._fail(exc.status, exc.message)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # keep serving; the traceback goes to the debug log
            log.debug("explore: request failed", exc_info=True)
            self._fail(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error ({exc.__class__.__name__})")

    # ------------------------------------------------------------------------------------------------ methods
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._handle(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._handle(self._post)

    def _not_allowed(self) -> None:
        self._fail(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not accepted")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_TRACE = do_CONNECT = _not_allowed  # noqa: N815

    def _get(self) -> None:
        path, query = self._route()
        data = self.server.data
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif path == "/api/column":
            name = self._param(query, "name")
            try:
                values = data.column(name)
            except CryoscapeError:
                raise _HTTPError(HTTPStatus.NOT_FOUND, f"no colour column {name[:80]!r}") from None
            self._json(HTTPStatus.OK, {"name": name, "values": compact_floats(values)})
        elif path == "/api/volume.png":
            text = self._param(query, "i")
            if not text.isdigit() or int(text) >= data.n:
                raise _HTTPError(HTTPStatus.BAD_REQUEST, f"i must be a particle position 0..{data.n - 1}")
            pos = int(text)
            try:
                png = self.server.thumbnails.png(pos, data.z[pos], title=f"particle {data.input_indices[pos]}")
            except CryoscapeError as exc:
                raise _HTTPError(HTTPStatus.SERVICE_UNAVAILABLE, f"cannot generate maps: {exc}") from None
            self._send(HTTPStatus.OK, png, "image/png")
        else:
            raise _HTTPError(HTTPStatus.NOT_FOUND, "not found")

    def _read_json_body(self):
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise _HTTPError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the selection as application/json")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise _HTTPError(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
        if int(length) > self.server.max_post_bytes():
            raise _HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                             f"request of {int(length)} bytes is larger than any selection of this run")
        try:
            return json.loads(self.rfile.read(int(length)).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "the request body is not valid JSON") from None

    def _post(self) -> None:
        path, _ = self._route()
        if path != "/api/export":
            raise _HTTPError(HTTPStatus.NOT_FOUND, "not found")
        origin = self.headers.get("Origin")
        if self.server.loopback and origin is not None and \
                origin not in {f"http://{h}" for h in self.server.allowed_hosts()}:
            raise _HTTPError(HTTPStatus.FORBIDDEN, "cross-origin requests are refused")
        body = self._read_json_body()
        if not isinstance(body, dict) or "indices" not in body:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, 'expected {"name": NAME or null, "indices": [int, ...]}')
        data = self.server.data
        try:
            indices = validate_selection_indices(body["indices"], data.input_indices, data.n_input)
            with self.server.export_lock:
                result = export_selection(data, indices, body.get("name"))
        except SelectionExists as exc:
            raise _HTTPError(HTTPStatus.CONFLICT, str(exc)) from None
        except CryoscapeError as exc:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        log.info(f"explore: exported {result['n_selected']} particles -> {result['folder']}")
        self._json(HTTPStatus.OK, result)
