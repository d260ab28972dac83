"""A small BIG-bench sdist of the real one's layout, and a package index on the loopback that serves it.

The package index no longer serves bigbench-1.0.0.tar.gz (its version page answers 403), so no test may
depend on the real file: tests that read BIG-bench tasks build this one from constructed task JSON and point
`bigbench.sdist` (with its `sha256`) at it; the download code is tested against `LoopbackIndex`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from layerprune.data.sources import BIGBENCH_TASK_ROOT
from layerprune.registry import BIGBENCH_SDIST


def _add_member(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    archive.addfile(info, io.BytesIO(payload))


def make_sdist(path: Path, tasks: dict[str, dict[str, Any]]) -> Path:
    """A .tar.gz laid out like the bigbench 1.0.0 sdist (`tasks`: name -> task JSON), with decoy members."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        _add_member(archive, "bigbench-1.0.0/setup.py", b"# not a task\n")
        # A decoy whose name merely ends like a task member.
        _add_member(archive, "bigbench-1.0.0/other/benchmark_tasks/mc/task.json", b'{"decoy": true}')
        for name, task in tasks.items():
            _add_member(archive, BIGBENCH_TASK_ROOT + name + "/task.json", json.dumps(task, indent=1).encode())
            _add_member(archive, BIGBENCH_TASK_ROOT + name + "/README.md", b"# readme\n")
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class LoopbackIndex:
    """A PEP 691 simple index on 127.0.0.1: `/simple/bigbench/` lists the sdist at `/files/<name>`.

    `index_status` (e.g. 403) makes the index page refuse, as the real index now does; `file_status` the file.
    """

    def __init__(self, sdist: Path | None, index_status: int = 200, file_status: int = 200) -> None:
        self.sdist, self.index_status, self.file_status = sdist, index_status, file_status
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/simple/bigbench/"

    @contextlib.contextmanager
    def running(self) -> Iterator[LoopbackIndex]:
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                index.requests.append(self.path)
                if self.path == "/simple/bigbench/":
                    if index.index_status != 200:
                        self.send_error(index.index_status, "This package version is not available")
                        return
                    files = [{"filename": BIGBENCH_SDIST, "url": f"/files/{BIGBENCH_SDIST}"}] if index.sdist else []
                    body = json.dumps({"meta": {"api-version": "1.1"}, "name": "bigbench", "files": files}).encode()
                    self._send(body, "application/vnd.pypi.simple.v1+json")
                elif self.path == f"/files/{BIGBENCH_SDIST}" and index.sdist is not None:
                    if index.file_status != 200:
                        self.send_error(index.file_status)
                        return
                    self._send(index.sdist.read_bytes(), "application/octet-stream")
                else:
                    self.send_error(404)

            def _send(self, body: bytes, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
