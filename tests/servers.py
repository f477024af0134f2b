"""Real HTTP servers on 127.0.0.1 for download tests: a Hub stand-in, a plain file host (with Range, broken
transfers and a Google-Drive-like confirm page), and an address where nothing listens.

Use them as context managers (`with HubServer(files) as hub: ... hub.url`) or call start()/stop() in a fixture.
Each server logs every request as `Logged(method, path, range, status)`; `.calls` gives just (method, path).
"""
from __future__ import annotations

import hashlib
import html
import re
import socket
import threading
import urllib.parse
import uuid
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Logged = namedtuple("Logged", "method path range status")


class _Server:
    def __init__(self):
        self.log: list[Logged] = []
        self._httpd = self._thread = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.log]

    def start(self):
        owner = self

        class Handler(_Handler):
            server_owner = owner

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # a short poll keeps stop() fast; the default 0.5 s would dominate the test time
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def handle(self, h: _Handler) -> None:
        raise NotImplementedError


class _Handler(BaseHTTPRequestHandler):
    server_owner: _Server

    def do_GET(self):
        self.server_owner.handle(self)

    do_HEAD = do_GET

    def send_response(self, code, message=None):
        # logged before any byte goes out, so a client that has its answer always finds the entry
        self.server_owner.log.append(Logged(self.command, self.path, self.headers.get("Range"), code))
        super().send_response(code, message)

    def log_message(self, *args):
        pass

    def reply(self, code: int, body: bytes = b"", headers: dict | None = None, send: int | None = None):
        """Send `body` with Content-Length (unless headers map it to None); `send` cuts the body short and drops
        the connection."""
        self.send_response(code)
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            if v is not None:
                self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body if send is None else body[:send])
        if send is not None:
            self.close_connection = True

    def reply_ranged(self, data: bytes, headers: dict | None = None, send: int | None = None):
        """200 with the whole `data`, or 206 / 416 for a `Range: bytes=N-[M]` request."""
        headers = {"Accept-Ranges": "bytes", **(headers or {})}
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "").strip())
        if not m:
            return self.reply(200, data, headers, send)
        start = int(m.group(1))
        end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
        if start >= len(data):
            return self.reply(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
        self.reply(206, data[start:end + 1], {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}, send)


class HubServer(_Server):
    """HEAD/GET `/{org}/{name}/resolve/{revision}/{path}` like huggingface.co, for `files[(repo, filename)]`
    (served at any revision; the commit hash is derived from repo and revision)."""

    def __init__(self, files: dict[tuple[str, str], bytes]):
        super().__init__()
        self.files = dict(files)

    @staticmethod
    def commit(repo: str, revision: str) -> str:
        return hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()

    def handle(self, h):
        path = urllib.parse.urlsplit(h.path).path
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if path.startswith("/api/") or not m:
            return h.reply(404, b"not found")
        repo, revision, filename = (urllib.parse.unquote(g) for g in m.groups())
        commit = self.commit(repo, revision)
        if not any(r == repo for r, _ in self.files):
            return h.reply(404, b"Repository not found", {"X-Error-Code": "RepoNotFound"})
        if (repo, filename) not in self.files:
            return h.reply(404, b"Entry not found", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
        data = self.files[(repo, filename)]
        h.reply_ranged(data, {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'})


class FileServer(_Server):
    """A plain file host for `files[path]` (path like "/ckpt/mae.pth") with Range support.

    Knobs (plain attributes, change them between requests): `truncate_after` sends only that many body bytes
    and drops the connection; `fail_paths` answer 404; `html_paths` answer 200 with an HTML page (a login wall);
    `no_length` sends no Content-Length (so a cut body looks complete to the client).
    Google-Drive-like route: `/download?id=X&export=download`
    serves `gdrive[X]`; for ids in `large` it first answers the "virus scan warning" HTML page whose form
    (action /download, hidden id/export/confirm/uuid) must be submitted to get the bytes."""

    def __init__(self, files: dict[str, bytes] | None = None, *, gdrive: dict[str, bytes] | None = None,
                 large: set[str] = frozenset(), truncate_after: int | None = None, fail_paths=()):
        super().__init__()
        self.files, self.gdrive, self.large = dict(files or {}), dict(gdrive or {}), set(large)
        self.truncate_after, self.fail_paths = truncate_after, set(fail_paths)
        self.html_paths, self.no_length = set(), False
        self.issued_uuids: set[str] = set()

    def handle(self, h):
        parts = urllib.parse.urlsplit(h.path)
        if parts.path in self.fail_paths:
            return h.reply(404, b"not found")
        if parts.path == "/download":
            return self._gdrive(h, dict(urllib.parse.parse_qsl(parts.query)))
        if parts.path in self.html_paths:
            return h.reply(200, b"<!DOCTYPE html><html><title>Sign in</title></html>", {"Content-Type": "text/html"})
        if parts.path not in self.files:
            return h.reply(404, b"not found")
        headers = {"Content-Type": "application/octet-stream"}
        if self.no_length:
            return h.reply(200, self.files[parts.path], {**headers, "Content-Length": None}, self.truncate_after)
        h.reply_ranged(self.files[parts.path], headers, self.truncate_after)

    def _gdrive(self, h, q):
        file_id = q.get("id", "")
        if file_id not in self.gdrive or q.get("export") != "download":
            return h.reply(404, b"<html><title>Not Found</title></html>", {"Content-Type": "text/html"})
        confirmed = q.get("confirm") == "t" and q.get("uuid") in self.issued_uuids
        if file_id in self.large and not confirmed:
            token = str(uuid.uuid4())
            self.issued_uuids.add(token)
            return h.reply(200, _warning_page(file_id, token), {"Content-Type": "text/html; charset=utf-8"})
        h.reply_ranged(self.gdrive[file_id], {"Content-Type": "application/octet-stream",
                                               "Content-Disposition": f'attachment; filename="{file_id}.bin"'},
                       self.truncate_after)


def _warning_page(file_id: str, token: str) -> bytes:
    # shaped like drive.usercontent.google.com's page for files too large to be virus-scanned
    hidden = "".join(f'<input type="hidden" name="{k}" value="{html.escape(v)}">'
                     for k, v in (("id", file_id), ("export", "download"), ("confirm", "t"), ("uuid", token)))
    return (f'<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>'
            f'<p class="uc-warning-caption">Google Drive can\'t scan this file for viruses.</p>'
            f'<form id="download-form" action="/download" method="get">'
            f'<input type="submit" id="uc-download-link" class="goog-inline-block" value="Download anyway">'
            f'{hidden}</form></body></html>').encode()


def server_down_url() -> str:
    """http://127.0.0.1:PORT where nothing listens (the port was free a moment ago), so connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
