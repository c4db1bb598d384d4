"""A small client for the parts of GitHub's REST API that ``template fetch`` needs.

Only git objects are used (refs, commits, trees, blobs), all addressed by SHA once the ref is
resolved, so every downloaded file can be checked against its git blob SHA-1.
"""

import base64
import contextlib
import hashlib
import re
import urllib.parse

import attrs
import httpx

from controller.errors import OperationError

UPSTREAM_REPO = "supabase/supabase"
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def git_blob_sha(data: bytes) -> str:
    """Git's object id for a blob holding ``data``: SHA-1 of ``blob <len>\\0`` + data."""
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(b"blob %d\0" % len(data))
    digest.update(data)
    return digest.hexdigest()


@attrs.frozen
class TreeEntry:
    path: str  # relative to the folder listed
    mode: str  # "100644", "100755", "120000" (symlink), "160000" (submodule), "040000"
    type: str  # "blob", "tree", "commit"
    sha: str
    size: int | None = None


class GitHubClient:
    def __init__(
        self,
        api: str,
        repo: str = UPSTREAM_REPO,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api = api.rstrip("/")
        self.repo = repo
        headers = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "supabase-manager",
        }
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            headers=headers, timeout=timeout, transport=transport, follow_redirects=True
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "GitHubClient":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return f"{self.api}/repos/{self.repo}/{path.lstrip('/')}"

    def _get(self, url: str, params: dict | None = None, missing_ok: bool = False):
        try:
            response = self._http.get(url, params=params)
        except httpx.HTTPError as exc:
            raise OperationError(f"GitHub API at {self.api} cannot be reached: {exc}") from None
        if response.status_code == 404 and missing_ok:
            return None, response
        if (
            response.status_code in (403, 429)
            and response.headers.get("x-ratelimit-remaining") == "0"
        ):
            raise OperationError(
                "GitHub API rate limit reached; try again later (or set GITHUB_TOKEN)"
            )
        if response.status_code != 200:
            message = ""
            with contextlib.suppress(ValueError):
                message = str(response.json().get("message", ""))
            raise OperationError(
                f"GitHub API answered {response.status_code} for {urllib.parse.urlsplit(url).path}"
                + (f": {message}" if message else "")
            )
        try:
            return response.json(), response
        except ValueError:
            raise OperationError(f"GitHub API sent something that is not JSON for {url}") from None

    def _quote(self, ref: str) -> str:
        return urllib.parse.quote(ref, safe="/")

    # --- refs -------------------------------------------------------------------------------
    def matching_tags(self, prefix: str) -> list[str]:
        """Tag names starting with ``prefix`` (e.g. "self-hosted/")."""
        url: str | None = self._url(f"git/matching-refs/tags/{self._quote(prefix)}")
        params: dict | None = {"per_page": 100}
        names: list[str] = []
        while url:
            data, response = self._get(url, params)
            if not isinstance(data, list):
                raise OperationError("GitHub API sent an unexpected answer for the tag list")
            for item in data:
                ref = str(item.get("ref", "")) if isinstance(item, dict) else ""
                if ref.startswith("refs/tags/"):
                    names.append(ref.removeprefix("refs/tags/"))
            url = response.links.get("next", {}).get("url")
            params = None
        return names

    def resolve_commit(self, ref: str) -> str:
        """The commit SHA a tag, branch or commit SHA names."""
        if _SHA_RE.match(ref):
            return ref
        for kind in ("tags", "heads"):
            data, _ = self._get(self._url(f"git/ref/{kind}/{self._quote(ref)}"), missing_ok=True)
            if data is None or not isinstance(data, dict):
                continue
            obj = data.get("object") or {}
            # Annotated tags point to a tag object; follow it (tags of tags too).
            for _ in range(5):
                if obj.get("type") != "tag":
                    break
                tag, _ = self._get(self._url(f"git/tags/{obj.get('sha')}"))
                obj = tag.get("object") or {}
            if obj.get("type") == "commit" and _SHA_RE.match(str(obj.get("sha", ""))):
                return str(obj["sha"])
            raise OperationError(f"{ref} does not point to a commit")
        raise OperationError(f"no tag or branch {ref!r} in {self.repo}")

    # --- objects ----------------------------------------------------------------------------
    def commit_tree(self, commit: str) -> str:
        data, _ = self._get(self._url(f"git/commits/{commit}"))
        try:
            return str(data["tree"]["sha"])
        except (KeyError, TypeError):
            raise OperationError(f"GitHub API sent no tree for commit {commit}") from None

    def tree(self, sha: str, recursive: bool = False) -> list[TreeEntry]:
        """The entries of tree ``sha``; recursive listings GitHub truncates are walked instead."""
        params = {"recursive": "1"} if recursive else None
        data, _ = self._get(self._url(f"git/trees/{sha}"), params)
        if not isinstance(data, dict) or not isinstance(data.get("tree"), list):
            raise OperationError(f"GitHub API sent an unexpected answer for tree {sha}")
        if data.get("truncated"):
            if not recursive:
                raise OperationError(f"GitHub API truncated the listing of tree {sha}")
            return self._walk(sha, "")
        entries = []
        for item in data["tree"]:
            try:
                entries.append(
                    TreeEntry(
                        path=str(item["path"]),
                        mode=str(item["mode"]),
                        type=str(item["type"]),
                        sha=str(item["sha"]),
                        size=item.get("size"),
                    )
                )
            except (KeyError, TypeError):
                raise OperationError(f"GitHub API sent a bad entry in tree {sha}") from None
        return entries

    def _walk(self, sha: str, prefix: str) -> list[TreeEntry]:
        out: list[TreeEntry] = []
        for entry in self.tree(sha):
            full = attrs.evolve(entry, path=prefix + entry.path)
            out.append(full)
            if entry.type == "tree":
                out.extend(self._walk(entry.sha, full.path + "/"))
        return out

    def folder(self, commit: str, folder: str) -> list[TreeEntry]:
        """Every entry below ``folder`` (paths relative to it) at ``commit``."""
        sha = self.commit_tree(commit)
        for part in [p for p in folder.strip("/").split("/") if p]:
            match = [e for e in self.tree(sha) if e.path == part and e.type == "tree"]
            if not match:
                raise OperationError(f"there is no folder {folder!r} at {commit[:12]}")
            sha = match[0].sha
        return self.tree(sha, recursive=True)

    def blob(self, sha: str, label: str | None = None) -> bytes:
        """The bytes of blob ``sha``, checked against the SHA (``label`` names it in errors)."""
        label = label or f"blob {sha}"
        data, _ = self._get(self._url(f"git/blobs/{sha}"))
        try:
            encoding = data.get("encoding", "base64")
            content = data["content"]
            if encoding == "base64":
                raw = base64.b64decode(content)
            elif encoding in ("utf-8", "utf8"):
                raw = str(content).encode()
            else:
                raise OperationError(f"{label} comes in an unknown encoding {encoding!r}")
        except (KeyError, TypeError, AttributeError, ValueError):
            raise OperationError(f"GitHub API sent a malformed {label}") from None
        actual = git_blob_sha(raw)
        if actual != sha:
            raise OperationError(
                f"{label}: the downloaded bytes do not match its git hash {sha} (got {actual})"
            )
        return raw
