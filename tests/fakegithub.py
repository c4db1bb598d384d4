"""A local stand-in for GitHub's REST API (git refs, commits, trees, blobs), for tests.

GitHub cannot be reached from the test machine, so ``template fetch`` is tested against this server:
it serves a fixture folder as the ``docker/`` folder of supabase/supabase at one or more tags, with
the same JSON shapes and git object ids (blob SHA-1 = sha1("blob <len>\\0" + bytes)) GitHub uses.
``corrupt`` names files whose served bytes differ from their listed hash.
"""

import base64
import hashlib
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = "supabase/supabase"


def blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _fake_sha(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts).encode(), usedforsecurity=False).hexdigest()


class FakeGitHub:
    """Serve ``folder`` as docker/ of supabase/supabase at each tag of ``tags``."""

    def __init__(
        self,
        folder: Path,
        tags: tuple[str, ...] = ("self-hosted/v0.8.2",),
        corrupt: tuple[str, ...] = (),
        extra_tags: tuple[str, ...] = (),
        page_size: int = 2,
    ) -> None:
        self.folder = Path(folder)
        self.corrupt = set(corrupt)
        self.page_size = page_size
        self.requests: list[str] = []
        self.blobs: dict[str, bytes] = {}
        self.trees: dict[str, list[dict]] = {}
        self.paths_by_sha: dict[str, str] = {}
        docker_tree = self._build_tree(self.folder, "docker")
        readme = b"# supabase\n"
        readme_sha = blob_sha(readme)
        self.blobs[readme_sha] = readme
        root_entries = [
            {"path": "README.md", "mode": "100644", "type": "blob", "sha": readme_sha, "size": 11},
            {"path": "docker", "mode": "040000", "type": "tree", "sha": docker_tree},
        ]
        self.root_tree = _fake_sha("root", docker_tree)
        self.trees[self.root_tree] = root_entries
        self.commit = _fake_sha("commit", self.root_tree)
        self.tags = {tag: self.commit for tag in tags}
        for tag in extra_tags:
            self.tags[tag] = _fake_sha("other", tag)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # --- objects -----------------------------------------------------------------------------
    def _build_tree(self, folder: Path, label: str) -> str:
        entries = []
        for child in sorted(folder.iterdir()):
            if child.is_dir():
                sha = self._build_tree(child, f"{label}/{child.name}")
                entries.append({"path": child.name, "mode": "040000", "type": "tree", "sha": sha})
            elif child.is_file():
                data = child.read_bytes()
                sha = blob_sha(data)
                self.blobs[sha] = data
                rel = str(child.relative_to(self.folder))
                self.paths_by_sha[sha] = rel
                mode = "100755" if child.stat().st_mode & 0o111 else "100644"
                entries.append(
                    {
                        "path": child.name,
                        "mode": mode,
                        "type": "blob",
                        "sha": sha,
                        "size": len(data),
                    }
                )
        sha = _fake_sha("tree", label, json.dumps(entries))
        self.trees[sha] = entries
        return sha

    def _recursive(self, sha: str, prefix: str = "") -> list[dict]:
        out = []
        for entry in self.trees[sha]:
            item = dict(entry, path=prefix + entry["path"])
            out.append(item)
            if entry["type"] == "tree":
                out.extend(self._recursive(entry["sha"], item["path"] + "/"))
        return out

    # --- server ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeGitHub":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: object, headers: dict | None = None) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(raw)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(parsed.query)
                path = urllib.parse.unquote(parsed.path)
                fake.requests.append(self.path)
                prefix = f"/repos/{REPO}/git/"
                if not path.startswith(prefix):
                    return self._send(404, {"message": "Not Found"})
                rest = path[len(prefix) :]
                if rest.startswith("ref/tags/"):
                    tag = rest.removeprefix("ref/tags/")
                    if tag not in fake.tags:
                        return self._send(404, {"message": "Not Found"})
                    return self._send(
                        200,
                        {
                            "ref": f"refs/tags/{tag}",
                            "object": {"type": "commit", "sha": fake.tags[tag]},
                        },
                    )
                if rest.startswith("ref/heads/"):
                    return self._send(404, {"message": "Not Found"})
                if rest.startswith("matching-refs/tags/"):
                    wanted = rest.removeprefix("matching-refs/tags/")
                    refs = [
                        {"ref": f"refs/tags/{tag}", "object": {"type": "commit", "sha": sha}}
                        for tag, sha in sorted(fake.tags.items())
                        if tag.startswith(wanted)
                    ]
                    page = int(query.get("page", ["1"])[0])
                    size = fake.page_size
                    chunk = refs[(page - 1) * size : page * size]
                    headers = {}
                    if page * size < len(refs):
                        next_url = f"{fake.url}{prefix}{rest}?page={page + 1}"
                        headers["Link"] = f'<{next_url}>; rel="next"'
                    return self._send(200, chunk, headers)
                if rest.startswith("commits/"):
                    sha = rest.removeprefix("commits/")
                    if sha != fake.commit:
                        return self._send(404, {"message": "Not Found"})
                    return self._send(200, {"sha": sha, "tree": {"sha": fake.root_tree}})
                if rest.startswith("trees/"):
                    sha = rest.removeprefix("trees/")
                    if sha not in fake.trees:
                        return self._send(404, {"message": "Not Found"})
                    recursive = query.get("recursive", ["0"])[0] not in ("0", "false", "")
                    tree = fake._recursive(sha) if recursive else fake.trees[sha]
                    return self._send(200, {"sha": sha, "tree": tree, "truncated": False})
                if rest.startswith("blobs/"):
                    sha = rest.removeprefix("blobs/")
                    if sha not in fake.blobs:
                        return self._send(404, {"message": "Not Found"})
                    data = fake.blobs[sha]
                    if fake.paths_by_sha.get(sha) in fake.corrupt:
                        data = data + b"\n# tampered\n"
                    return self._send(
                        200,
                        {
                            "sha": sha,
                            "size": len(data),
                            "encoding": "base64",
                            "content": base64.encodebytes(data).decode(),
                        },
                    )
                return self._send(404, {"message": "Not Found"})

        return Handler
