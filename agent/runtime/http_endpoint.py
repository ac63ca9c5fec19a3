"""A small read-only HTTP/1.1 server on asyncio for the status endpoint and the metrics:
GET (and HEAD) of a fixed set of paths, each answered by a function of no arguments.

Not a web framework: no request bodies, no keep-alive (each answer closes its
connection), a request head of at most 8 KiB read within 5 s. Anything else gets its
status code (400, 404, 405, 413, 408), never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from drivers.task_end import within

log = logging.getLogger("pile_agent.http")

MAX_HEAD_BYTES = 8192
HEAD_TIMEOUT_S = 5.0

# path -> () -> (content type, body)
Route = Callable[[], tuple[str, bytes]]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 413: "Content Too Large", 500: "Internal Server Error"}


def url_host(host: str) -> str:
    """A host as it goes in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


class HttpEndpoint:
    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen (OSError if the address cannot be had)."""
        self._server = await asyncio.start_server(self._serve, host, port,
                                                  reuse_address=True, limit=MAX_HEAD_BYTES)
        sock = self._server.sockets[0].getsockname()
        self.address = (sock[0], sock[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await within(self._server.wait_closed(), 1.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, ctype, body, head_only = await self._answer(reader)
            head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                    f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Cache-Control: no-store\r\nConnection: close\r\n\r\n").encode()
            writer.write(head if head_only else head + body)
            await within(writer.drain(), HEAD_TIMEOUT_S)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes, bool]:
        text = "text/plain; charset=utf-8"
        try:
            head = await within(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            return 413, text, b"request head too large\n", False
        except TimeoutError:
            return 408, text, b"request head not received in time\n", False
        except asyncio.IncompleteReadError:
            return 400, text, b"incomplete request\n", False
        if len(head) > MAX_HEAD_BYTES:
            return 413, text, b"request head too large\n", False
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return 400, text, b"not an HTTP/1.x request line\n", False
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, text, b"read-only: GET or HEAD\n", False
        route = self.routes.get(target)
        if route is None:
            known = " ".join(sorted(self.routes))
            return 404, text, f"no such path; try {known}\n".encode(), method == "HEAD"
        try:
            ctype, body = route()
        except Exception:
            log.exception("the %s answer failed", target)
            return 500, text, b"internal error (logged)\n", method == "HEAD"
        return 200, ctype, body, method == "HEAD"
