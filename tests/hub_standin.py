"""A local stand-in for the Hugging Face Hub HTTP API, for tests that must not reach the network.

It speaks just enough of the Hub protocol for `huggingface_hub` (0.36 with `requests`, 1.x/2.x with httpx) and
`transformers` to create a repository, upload a folder in one commit (optionally as a pull request), and download
by repo id (`hf_hub_download`, `snapshot_download`, `from_pretrained`, `pipeline`). Point a client at it with
`HF_ENDPOINT=hub.url`, set before `huggingface_hub` is imported (it reads the variable at import time).

    with HubStandin(token="hf_test") as hub:
        ...  # run a client with HF_ENDPOINT=hub.url, HF_TOKEN=hf_test
        hub.files("someone/repo")  # {path: bytes} at main
        hub.commits, hub.repo_creations, hub.requests, hub.unknown, hub.errors

Everything lives in memory: repositories → commits (40-hex shas) → {path: bytes}, branches and `refs/pr/N` refs.
Uploads are always inline: the preupload check answers `"uploadMode": "regular"` for every file, so the commit
carries each file base64-encoded in its NDJSON body and neither LFS nor Xet is involved (responses never carry
Xet headers, so downloads are plain HTTP too). Only model repositories with `namespace/name` ids are served.

Endpoints (what huggingface_hub 0.36 and 2.4 with transformers 4.57 and 5.x call for the round trip, and whoami):

    POST /api/repos/create                                   create_repo (409 if it exists: exist_ok)
    POST /api/validate-yaml                                  README metadata check before an upload
    GET  /api/whoami-v2                                      the token's user
    GET  /api/models/{repo}[/revision/{rev}]                 model_info / repo_info (sha, siblings)
    GET  /api/models/{repo}/tree/{rev}[/{path}]              list_repo_tree (?recursive=)
    POST /api/models/{repo}/preupload/{rev}                  upload modes: always "regular"
    POST /api/models/{repo}/commit/{rev}[?create_pr=1]       create_commit (NDJSON: header, file, deletedFile…)
    POST /api/models/{repo}/discussions                      create_pull_request (hub ≥ 1.x uploads to its ref)
    GET  /api/models/{repo}/discussions/{num}                get_discussion_details
    HEAD/GET /{repo}/resolve/{rev}/{path}                    file metadata (X-Repo-Commit, ETag, Content-Length)

Errors carry the headers `hf_raise_for_status` dispatches on: 404 with `X-Error-Code: RepoNotFound`,
`RevisionNotFound` or `EntryNotFound` (the last one with `X-Repo-Commit`, so clients cache the absence of optional
files). A private repository answers 401 RepoNotFound without the token, like the Hub. Any other request is
answered 501, printed to stderr and kept in `unknown`; a handler crash is answered 400 and kept in `errors`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
import threading
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a file: what the Hub gives as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    summary: str
    description: str
    files: dict[str, bytes]
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    refs: dict[str, str] = field(default_factory=dict)  # "main" / "refs/pr/1" → commit oid
    commits: dict[str, Commit] = field(default_factory=dict)
    discussions: list[dict] = field(default_factory=list)
    created_at: str = ""

    def resolve(self, revision: str) -> str | None:
        """Commit oid of a branch, a PR ref, or a (full) commit oid; None if unknown."""
        if revision in self.refs:
            return self.refs[revision]
        if re.fullmatch(r"[0-9a-f]{40}", revision) and revision in self.commits:
            return revision
        return None


@dataclass
class Request:
    method: str
    path: str  # unquoted, without the query string
    query: dict[str, str]
    status: int = 0


class HubError(Exception):
    """An error answer: status, X-Error-Code, message, extra headers."""

    def __init__(self, status: int, code: str | None, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


SEGMENT = r"([^/]+)"
REPO = rf"{SEGMENT}/{SEGMENT}"  # namespace/name, each still URL-quoted


class HubStandin:
    """The in-memory Hub and its HTTP server on 127.0.0.1 (a free port), served from a background thread."""

    def __init__(self, token: str = "hf_standin_token", user: str = "someone", verbose: bool = False):
        self.token, self.user, self.verbose = token, user, verbose
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.repo_creations: list[dict] = []  # {"repo_id", "private", "existed", "payload"}
        self.commits: list[dict] = []  # {"repo_id", "revision", "ref", "pull_request", "summary", "files", …}
        self.unknown: list[str] = []  # "METHOD /path?query" of requests no route handles
        self.errors: list[str] = []  # tracebacks of handler crashes
        self._lock = threading.RLock()
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.routes = [
            ("POST", r"/api/repos/create", self.create_repo),
            ("POST", r"/api/validate-yaml", self.validate_yaml),
            ("GET", r"/api/whoami-v2", self.whoami),
            ("GET", rf"/api/models/{REPO}", self.model_info),
            ("GET", rf"/api/models/{REPO}/revision/{SEGMENT}", self.model_info),
            ("GET", rf"/api/models/{REPO}/tree/{SEGMENT}(/.+)?", self.tree),
            ("POST", rf"/api/models/{REPO}/preupload/{SEGMENT}", self.preupload),
            ("POST", rf"/api/models/{REPO}/commit/{SEGMENT}", self.commit),
            ("POST", rf"/api/models/{REPO}/discussions", self.create_discussion),
            ("GET", rf"/api/models/{REPO}/discussions/(\d+)", self.discussion),
            ("HEAD", rf"/{REPO}/resolve/{SEGMENT}/(.+)", self.resolve),
            ("GET", rf"/{REPO}/resolve/{SEGMENT}/(.+)", self.resolve),
        ]

    # ─────────────────────────────────────────── server lifecycle ───────────────────────────────────────────

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the stand-in first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> HubStandin:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="hub-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> HubStandin:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ─────────────────────────────────────────── state helpers (for tests) ───────────────────────────────────

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return dict(repo.commits[repo.resolve(revision)].files)

    def head(self, repo_id: str, revision: str = "main") -> str | None:
        return self.repos[repo_id].resolve(revision)

    def add_repo(self, repo_id: str, private: bool = False) -> Repo:
        """A repository with the Hub's initial commit (a `.gitattributes`), as `create_repo` makes."""
        with self._lock:
            repo = Repo(repo_id, private, created_at=_now())
            self.repos[repo_id] = repo
            self._add_commit(repo, "main", "initial commit", "", {".gitattributes": GITATTRIBUTES})
            return repo

    def add_commit(self, repo_id: str, files: dict[str, bytes], ref: str = "main", summary: str = "update") -> str:
        """A commit of `files` (added to or replacing those of `ref`'s head) made directly, without a client."""
        with self._lock:
            repo = self.repos[repo_id]
            return self._add_commit(repo, ref, summary, "", {**self.files(repo_id, ref), **files})

    def _add_commit(self, repo: Repo, ref: str, summary: str, description: str, files: dict[str, bytes]) -> str:
        parent = repo.refs.get(ref)
        self._counter += 1
        seed = json.dumps(
            [repo.repo_id, ref, parent, summary, self._counter, sorted(map(git_blob_sha1, files.values()))]
        )
        oid = hashlib.sha1(seed.encode()).hexdigest()
        repo.commits[oid] = Commit(oid, parent, summary, description, files, _now())
        repo.refs[ref] = oid
        return oid

    def _open_pull_request(self, repo: Repo, title: str, description: str) -> dict:
        """A PR is a discussion with a `refs/pr/N` ref starting at main's head."""
        num = len(repo.discussions) + 1
        discussion = {
            "num": num,
            "title": title,
            "description": description,
            "isPullRequest": True,
            "status": "open",
            "createdAt": _now(),
        }
        repo.discussions.append(discussion)
        repo.refs[f"refs/pr/{num}"] = repo.refs["main"]
        return discussion

    # ─────────────────────────────────────────── access checks ───────────────────────────────────────────

    def _authorized(self, headers) -> bool:
        return headers.get("Authorization", "") == f"Bearer {self.token}"

    def _require_token(self, headers) -> None:
        if not self._authorized(headers):
            raise HubError(401, None, "Invalid credentials in Authorization header")

    def _repo(self, namespace: str, name: str, headers) -> Repo:
        repo_id = f"{unquote(namespace)}/{unquote(name)}"
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "RepoNotFound", f"Repository not found: {repo_id}")
        if repo.private and not self._authorized(headers):
            raise HubError(401, "RepoNotFound", f"Repository not found: {repo_id}")  # what the Hub answers
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        oid = repo.resolve(revision)
        if oid is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo.commits[oid]

    # ─────────────────────────────────────────── endpoints ───────────────────────────────────────────
    # Each takes (request, *URL groups) and returns (status, headers, body) or raises HubError.

    def create_repo(self, req: _Handler):
        self._require_token(req.headers)
        payload = req.json()
        if payload.get("type") not in (None, "model"):
            raise HubError(400, None, f"The stand-in serves model repositories only, not {payload['type']!r}")
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        private = bool(payload.get("private")) or payload.get("visibility") == "private"  # hub 0.x / hub ≥ 1.x
        with self._lock:
            existed = repo_id in self.repos
            self.repo_creations.append({"repo_id": repo_id, "private": private, "existed": existed, "payload": payload})
            if existed:
                return _json(409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"})
            self.add_repo(repo_id, private)
        return _json(200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def validate_yaml(self, req: _Handler):
        req.json()
        return _json(200, {"errors": [], "warnings": []})

    def whoami(self, req: _Handler):
        self._require_token(req.headers)
        return _json(
            200,
            {
                "type": "user",
                "name": self.user,
                "fullname": self.user,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"role": "write"}},
            },
        )

    def model_info(self, req: _Handler, namespace: str, name: str, revision: str = "main"):
        repo = self._repo(namespace, name, req.headers)
        commit = self._commit(repo, unquote(revision))
        siblings = [
            {"rfilename": path, "size": len(content), "blobId": git_blob_sha1(content)}
            for path, content in sorted(commit.files.items())
        ]
        return _json(
            200,
            {
                "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": commit.oid,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "createdAt": repo.created_at,
                "lastModified": commit.date,
                "siblings": siblings,
            },
        )

    def tree(self, req: _Handler, namespace: str, name: str, revision: str, folder: str | None = None):
        repo = self._repo(namespace, name, req.headers)
        commit = self._commit(repo, unquote(revision))
        folder = unquote(folder or "").strip("/")
        recursive = req.query.get("recursive", "false").lower() in ("true", "1")
        prefix = f"{folder}/" if folder else ""
        entries: dict[str, dict] = {}
        for path, content in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                if depth > 1 and not recursive:
                    break
                sub = prefix + "/".join(parts[:depth])
                entries.setdefault(
                    sub, {"type": "directory", "oid": hashlib.sha1(sub.encode()).hexdigest(), "size": 0, "path": sub}
                )
            if recursive or len(parts) == 1:
                entries[path] = {"type": "file", "oid": git_blob_sha1(content), "size": len(content), "path": path}
        if folder and not entries:
            raise HubError(
                404, "EntryNotFound", f"{folder} does not exist on {revision}", {"X-Repo-Commit": commit.oid}
            )
        return _json(200, list(entries.values()))

    def preupload(self, req: _Handler, namespace: str, name: str, revision: str):
        self._require_token(req.headers)
        repo = self._repo(namespace, name, req.headers)
        existing = self._commit(repo, unquote(revision)).files
        files = [
            {
                "path": item["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": git_blob_sha1(existing[item["path"]]) if item["path"] in existing else None,
            }
            for item in req.json()["files"]
        ]
        return _json(200, {"files": files})

    def commit(self, req: _Handler, namespace: str, name: str, revision: str):
        self._require_token(req.headers)
        repo = self._repo(namespace, name, req.headers)
        revision = unquote(revision)
        create_pr = req.query.get("create_pr") == "1"
        header, added, deleted = {}, {}, []
        for line in req.body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, None, f"Unsupported encoding {value['encoding']!r}")
                added[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:  # lfsFile, copies… never asked for: every file was announced "regular" at preupload
                raise HubError(400, None, f"The stand-in does not support commit operation {key!r}: {value}")
        with self._lock:
            base = self._commit(repo, revision)
            if header.get("parentCommit") and not base.oid.startswith(header["parentCommit"]):
                raise HubError(412, None, f"Parent commit {header['parentCommit']} is not the head of {revision}")
            pull_request = None
            ref = revision
            if create_pr:  # hub 0.x: `?create_pr=1` opens the PR and commits onto its ref
                pull_request = self._open_pull_request(repo, header.get("summary", ""), header.get("description", ""))
                ref = f"refs/pr/{pull_request['num']}"
            elif ref not in repo.refs:
                raise HubError(400, None, f"Cannot commit onto {revision}: not a branch or a PR ref")
            files = {
                path: content
                for path, content in base.files.items()
                if path not in deleted and not any(path.startswith(d.rstrip("/") + "/") for d in deleted)
            }
            files.update(added)
            oid = self._add_commit(repo, ref, header.get("summary", ""), header.get("description", ""), files)
            self.commits.append(
                {
                    "repo_id": repo.repo_id,
                    "revision": revision,
                    "ref": ref,
                    "create_pr": create_pr,  # the `?create_pr=1` flag (hub 0.x); hub ≥ 1.x commits to the PR's ref
                    "pull_request": int(ref.rsplit("/", 1)[1]) if ref.startswith("refs/pr/") else None,
                    "summary": header.get("summary"),
                    "description": header.get("description"),
                    "parent_commit": header.get("parentCommit"),
                    "files": added,
                    "deleted": deleted,
                    "oid": oid,
                }
            )
        pr_url = f"{self.url}/{repo.repo_id}/discussions/{pull_request['num']}" if pull_request else None
        return _json(
            200,
            {
                "success": True,
                "commitOid": oid,
                "commitUrl": f"{self.url}/{repo.repo_id}/commit/{oid}",
                "pullRequestUrl": pr_url,
                "hookOutput": "",
            },
        )

    def create_discussion(self, req: _Handler, namespace: str, name: str):
        self._require_token(req.headers)
        repo = self._repo(namespace, name, req.headers)
        payload = req.json()
        if not payload.get("pullRequest"):
            raise HubError(400, None, "The stand-in only opens pull requests, not plain discussions")
        with self._lock:
            discussion = self._open_pull_request(repo, payload.get("title", ""), payload.get("description", ""))
        return _json(
            200,
            {"num": discussion["num"], "url": {"web": f"{self.url}/{repo.repo_id}/discussions/{discussion['num']}"}},
        )

    def discussion(self, req: _Handler, namespace: str, name: str, num: str):
        repo = self._repo(namespace, name, req.headers)
        if not 1 <= int(num) <= len(repo.discussions):
            raise HubError(404, None, f"Discussion {num} not found")
        discussion = repo.discussions[int(num) - 1]
        return _json(
            200,
            {
                **discussion,
                "author": {"name": self.user},
                "repo": {"name": repo.repo_id, "type": "model"},
                "events": [],
                "filesWithConflicts": [],
                "diff": "",
                "changes": {"base": "refs/heads/main"},
            },
        )

    def resolve(self, req: _Handler, namespace: str, name: str, revision: str, path: str):
        repo = self._repo(namespace, name, req.headers)
        commit = self._commit(repo, unquote(revision))
        path = unquote(path)
        if path not in commit.files:
            raise HubError(
                404, "EntryNotFound", f"{path} does not exist on {unquote(revision)}", {"X-Repo-Commit": commit.oid}
            )
        content = commit.files[path]
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{git_blob_sha1(content)}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        status, body = 200, content
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", req.headers.get("Range", ""))
        if match:  # resumed downloads
            start = int(match[1])
            end = int(match[2]) if match[2] else len(content) - 1
            status, body = 206, content[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{len(content)}"
        return status, headers, body


def _json(status: int, payload) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(payload).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients' connection pools expect
    server_version = "HubStandin/1.0"

    @property
    def hub(self) -> HubStandin:
        return self.server.hub  # type: ignore[attr-defined]

    def json(self):
        return json.loads(self.body or b"{}")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self) -> None:
        hub = self.hub
        split = urlsplit(self.path)
        self.query = {key: values[-1] for key, values in parse_qs(split.query).items()}
        self.body = self._read_body()
        record = Request(self.command, unquote(split.path), self.query)
        with hub._lock:
            hub.requests.append(record)
        try:
            for method, pattern, endpoint in hub.routes:
                match = re.fullmatch(pattern, split.path)
                if method == self.command and match:
                    status, headers, body = endpoint(self, *[g for g in match.groups() if g is not None])
                    break
            else:
                line = f"{self.command} {self.path}"
                hub.unknown.append(line)
                print(f"\n!!! HUB STAND-IN: no route for {line}\n", file=sys.stderr, flush=True)
                status, headers, body = _json(501, {"error": f"The Hub stand-in does not implement {line}"})
        except HubError as error:
            status, body = error.status, json.dumps({"error": error.message}).encode()
            headers = {"Content-Type": "application/json", "X-Error-Message": error.message, **error.headers}
            if error.code:
                headers["X-Error-Code"] = error.code
        except Exception:  # a bug in the stand-in: answer 400 (not retried, unlike 5xx) and keep the traceback
            hub.errors.append(traceback.format_exc())
            print(f"\n!!! HUB STAND-IN crashed on {self.command} {self.path}:\n{hub.errors[-1]}", file=sys.stderr)
            status, headers, body = _json(400, {"error": f"Hub stand-in crashed: {hub.errors[-1][-500:]}"})
        record.status = status
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def log_message(self, format, *args) -> None:
        if self.hub.verbose:
            super().log_message(format, *args)
