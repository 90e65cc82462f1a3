"""A fake of ModelScope's HTTP file API on loopback (http.server), for download tests without network.

`GET /api/v1/models/<repo>/repo/files?Revision=&Recursive=true` lists files (Path, Size, Sha256, Type) and
`GET /api/v1/models/<repo>/repo?Revision=&FilePath=<path>` serves one, honouring `Range: bytes=N-`.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeModelScope:
    """ModelScope's file API on loopback: the file list and `repo?FilePath=` with Range, with switches to
    drop a connection half way and to record the Range headers it was asked for."""

    def __init__(self, files: dict[str, bytes], repo: str = "MAILAND/majicflus_v1",
                 more_repos: dict[str, dict[str, bytes]] | None = None):
        self.files, self.repo = files, repo
        self.repos = {repo: files, **(more_repos or {})}
        self.ranges: list[str | None] = []
        self.drop_after: int | None = None  # send this many bytes of the next body, then close
        self.lie_about_hash = False
        self.status: int | None = None  # answer every file request with this error status
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urllib.parse.urlparse(self.path)
                query = urllib.parse.parse_qs(url.query)
                for repo, files in fake.repos.items():
                    if url.path == f"/api/v1/models/{repo}/repo/files":
                        return self._json(fake.listing(files))
                    if url.path == f"/api/v1/models/{repo}/repo" and query.get("FilePath", [""])[0] in files:
                        return self._file(files[query["FilePath"][0]])
                self.send_error(404)

            def _json(self, body):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _file(self, data: bytes):
                rng = self.headers.get("Range")
                fake.ranges.append(rng)
                if fake.status:
                    return self.send_error(fake.status)
                start = 0
                if rng:
                    start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fake.drop_after is not None:
                    self.wfile.write(body[:fake.drop_after])
                    fake.drop_after = None
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def listing(self, files: dict[str, bytes]):
        files = [{"Name": p.rsplit("/", 1)[-1], "Path": p, "Type": "blob", "Size": len(d),
                  "Sha256": hashlib.sha256(b"lie" if self.lie_about_hash else d).hexdigest(), "Revision": "abc"}
                 for p, d in files.items()]
        return {"Code": 200, "Data": {"Files": files + [{"Name": "docs", "Path": "docs", "Type": "tree", "Size": 0}]}}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
