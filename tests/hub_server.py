"""A small Hugging Face Hub-compatible HTTP server on 127.0.0.1, for tests of the real
huggingface_hub client (HF_ENDPOINT points at it).

It speaks just the endpoints huggingface_hub 2.x calls for what turbopack does (read from the
installed client's source: hf_api.py, _commit_api.py, lfs.py, file_download.py,
_snapshot_download.py):

  POST /api/repos/create                          create_repo (409 + url when it exists)
  POST /api/validate-yaml                         README.md front matter check before a commit
  POST /api/models/{repo}/preupload/{rev}         upload mode per file: "regular" or "lfs"
  POST /{repo}.git/info/lfs/objects/batch         LFS batch: "basic" upload + verify actions
  PUT  /_lfs/{oid}                                the LFS object itself (sha256 and size checked)
  POST /_lfs_verify/{oid}                         LFS verify
  POST /api/models/{repo}/commit/{rev}            NDJSON commit: header, file (base64), lfsFile
  POST /api/models/{repo}/branch/{branch}         create_branch
  GET  /api/models/{repo}[/revision/{rev}]        model_info / repo_info (sha, siblings)
  GET  /api/models/{repo}/tree/{rev}              list_repo_tree (one page)
  HEAD/GET /{repo}/resolve/{rev}/{path}           file metadata (X-Repo-Commit, ETag) and bytes

It never advertises Xet (no X-Xet-* headers), so downloads take the plain HTTP path. Uploads
pick Xet on the client side whenever the hf_xet package is installed, so clients that talk to
this server run with HF_HUB_DISABLE_XET=1 and fall back to LFS. Errors carry X-Error-Code like
the Hub's, so the client raises its typed errors (RepositoryNotFoundError, ...). A write needs
``Authorization: Bearer <token>``. The server shuts itself down after ``max_seconds``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import yaml


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Blob:
    data: bytes
    lfs: bool

    @property
    def oid(self) -> str:
        return git_sha1(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Repo:
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    commits: dict[str, dict[str, Blob]] = field(default_factory=dict)  # sha -> files

    def resolve(self, rev: str) -> str | None:
        return self.branches.get(rev) or (rev if rev in self.commits else None)


class HubState:
    def __init__(self, token: str, lfs_threshold: int):
        self.token, self.lfs_threshold = token, lfs_threshold
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.log: list[str] = []  # "METHOD path" of every request, for tests to assert on
        self.lock = threading.Lock()

    def commit(self, repo: Repo, branch: str, files: dict[str, Blob]) -> str:
        parent = repo.branches.get(branch)
        sha = hashlib.sha1(f"{parent}{time.time_ns()}{sorted(files)}".encode()).hexdigest()
        repo.commits[sha] = files
        repo.branches[branch] = sha
        return sha


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState
    base: str

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    # -- plumbing ----------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(
        self, status: int, body: bytes = b"", headers: dict | None = None, ctype: str = "application/json"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, code: str | None, message: str, headers: dict | None = None) -> None:
        h = dict(headers or {})
        if code:
            h["X-Error-Code"] = code
        h["X-Error-Message"] = message
        self._json(status, {"error": message}, h)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.state.token}"

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized()):
            self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
            return None
        return repo

    def _dispatch(self, routes) -> None:
        path = unquote(urlparse(self.path).path)
        self.state.log.append(f"{self.command} {path}")
        for prefix, suffix_sep, fn in routes:
            if path.startswith(prefix) and (suffix_sep is None or suffix_sep in path[len(prefix):]):
                with self.state.lock:
                    return fn(path[len(prefix):])
        self._error(404, None, f"no route for {self.command} {path}")

    # -- verbs -------------------------------------------------------------------------------
    def do_POST(self) -> None:
        self._dispatch([("/api/repos/create", None, self.create_repo), ("/api/validate-yaml", None, self.validate_yaml),
                        ("/_lfs_verify/", None, self.lfs_verify), ("/api/models/", "/preupload/", self.preupload),
                        ("/api/models/", "/commit/", self.commit), ("/api/models/", "/branch/", self.branch),
                        ("/", ".git/info/lfs/objects/batch", self.lfs_batch)])

    def do_PUT(self) -> None:
        self._dispatch([("/_lfs/", None, self.lfs_put)])

    def do_GET(self) -> None:
        self._dispatch([("/api/models/", "/tree/", self.tree), ("/api/models/", None, self.info),
                        ("/", "/resolve/", self.resolve)])

    do_HEAD = do_GET

    # -- repos -------------------------------------------------------------------------------
    def create_repo(self, _: str) -> None:
        if not self._authorized():
            return self._error(401, None, "Invalid credentials in Authorization header")
        p = json.loads(self._body())
        repo_id = f"{p['organization']}/{p['name']}" if p.get("organization") else p["name"]
        url = f"{self.base}/{repo_id}"
        if repo_id in self.state.repos:
            return self._json(409, {"error": "You already created this model repo", "url": url})
        repo = self.state.repos[repo_id] = Repo(private=p.get("visibility") == "private" or bool(p.get("private")))
        self.state.commit(
            repo, "main", {".gitattributes": Blob(b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n", False)}
        )
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, _: str) -> None:
        content = json.loads(self._body())["content"]
        errors = []
        if content.startswith("---"):
            try:
                meta = yaml.safe_load(content.split("---")[1])
                if not isinstance(meta, dict):
                    errors.append({"message": "metadata must be a YAML mapping"})
            except yaml.YAMLError as e:
                errors.append({"message": f"invalid YAML: {e}"})
        self._json(400 if errors else 200, {"errors": errors, "warnings": []})

    def branch(self, rest: str) -> None:
        repo_id, _, branch = rest.partition("/branch/")
        repo = self._repo(repo_id)
        if repo is None:
            return
        if branch in repo.branches:
            return self._error(409, None, "Reference already exists")
        start = json.loads(self._body() or b"{}").get("startingPoint") or "main"
        repo.branches[branch] = repo.resolve(start)
        self._json(200, {})

    # -- uploads -----------------------------------------------------------------------------
    def preupload(self, rest: str) -> None:
        repo_id, _, rev = rest.partition("/preupload/")
        repo = self._repo(repo_id)
        if repo is None:
            return
        current = repo.commits.get(repo.resolve(rev) or "", {})
        files = []
        for f in json.loads(self._body())["files"]:
            lfs = f["size"] >= self.state.lfs_threshold
            old = current.get(f["path"])
            oid = (old.sha256 if old.lfs else old.oid) if old is not None else None
            files.append(
                {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        self._json(200, {"files": files, "commitOid": repo.resolve(rev)})

    def lfs_batch(self, rest: str) -> None:
        if not self._authorized():
            return self._error(401, None, "Invalid credentials in Authorization header")
        objects = []
        for o in json.loads(self._body())["objects"]:
            entry = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if o["oid"] not in self.state.lfs:
                entry["actions"] = {"upload": {"href": f"{self.base}/_lfs/{o['oid']}", "header": {}},
                                    "verify": {"href": f"{self.base}/_lfs_verify/{o['oid']}", "header": {}}}
            objects.append(entry)
        self._send(
            200, json.dumps({"transfer": "basic", "objects": objects}).encode(), ctype="application/vnd.git-lfs+json"
        )

    def lfs_put(self, oid: str) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            return self._error(400, None, "sha256 mismatch")
        self.state.lfs[oid] = data
        self._json(200, {})

    def lfs_verify(self, oid: str) -> None:
        p = json.loads(self._body())
        ok = oid in self.state.lfs and len(self.state.lfs[oid]) == p["size"]
        self._json(200 if ok else 404, {})

    def commit(self, rest: str) -> None:
        repo_id, _, rev = rest.partition("/commit/")
        if not self._authorized():
            return self._error(401, None, "Invalid credentials in Authorization header")
        repo = self._repo(repo_id)
        if repo is None:
            return
        if rev not in repo.branches:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        files = dict(repo.commits[repo.branches[rev]])
        for line in self._body().splitlines():
            item = json.loads(line)
            v = item["value"]
            if item["key"] == "file":
                files[v["path"]] = Blob(base64.b64decode(v["content"]), False)
            elif item["key"] == "lfsFile":
                if v["oid"] not in self.state.lfs:
                    return self._error(400, None, f"LFS object {v['oid']} was never uploaded")
                files[v["path"]] = Blob(self.state.lfs[v["oid"]], True)
            elif item["key"] == "deletedFile":
                files.pop(v["path"], None)
        sha = self.state.commit(repo, rev, files)
        self._json(200, {"commitUrl": f"{self.base}/{repo_id}/commit/{sha}", "commitOid": sha, "success": True})

    # -- downloads ---------------------------------------------------------------------------
    def info(self, rest: str) -> None:
        repo_id, _, rev = rest.partition("/revision/")
        repo = self._repo(repo_id)
        if repo is None:
            return
        sha = repo.resolve(rev or "main")
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        siblings = [{"rfilename": p} for p in sorted(repo.commits[sha])]
        self._json(200, {"id": repo_id, "sha": sha, "private": repo.private, "siblings": siblings,
                         "lastModified": "2026-01-01T00:00:00.000Z"})

    def tree(self, rest: str) -> None:
        repo_id, _, rev = rest.partition("/tree/")
        repo = self._repo(repo_id)
        if repo is None:
            return
        sha = repo.resolve(rev)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        out = []
        for path, blob in sorted(repo.commits[sha].items()):
            entry = {"type": "file", "path": path, "size": len(blob.data), "oid": blob.oid}
            if blob.lfs:
                entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": 134}
            out.append(entry)
        self._json(200, out)

    def resolve(self, rest: str) -> None:
        repo_id, _, tail = rest.partition("/resolve/")
        repo = self._repo(repo_id)
        if repo is None:
            return
        for branch in sorted(repo.branches, key=len, reverse=True):  # branch names may hold "/"
            if tail.startswith(branch + "/"):
                rev, path = branch, tail[len(branch) + 1:]
                break
        else:
            rev, _, path = tail.partition("/")
        sha = repo.resolve(rev)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        blob = repo.commits[sha].get(path)
        if blob is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist", {"X-Repo-Commit": sha})
        data = blob.data
        headers = {"X-Repo-Commit": sha, "ETag": f'"{blob.sha256 if blob.lfs else blob.oid}"', "Accept-Ranges": "bytes"}
        if blob.lfs:
            headers["X-Linked-Etag"] = f'"{blob.sha256}"'
            headers["X-Linked-Size"] = str(len(data))
        rng = self.headers.get("Range")
        if rng and self.command == "GET" and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0] or 0)
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return self._send(206, data[start:], headers, "application/octet-stream")
        self._send(200, data, headers, "application/octet-stream")


class HubServer:
    """``with HubServer() as hub:`` -> hub.url for HF_ENDPOINT, hub.token for HF_TOKEN, hub.state."""

    def __init__(self, token: str = "hf_turbopack_test_token", lfs_threshold: int = 64 << 10, max_seconds: float = 120):
        self.state = HubState(token, lfs_threshold)
        self.token, self.max_seconds = token, max_seconds
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        handler.base = self.url
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._timer = threading.Timer(max_seconds, self.stop)  # stops by itself, whatever the test does
        self._timer.daemon = True

    def start(self) -> HubServer:
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def files(self, repo_id: str, rev: str = "main") -> dict[str, Blob]:
        repo = self.state.repos[repo_id]
        return repo.commits[repo.resolve(rev)]


# -- running the real client against the server ---------------------------------------------------
# huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE and its cache paths once, at import; the test
# process may have imported it already (conftest sets HF_HUB_OFFLINE=1), so clients run in a fresh
# interpreter with the environment a user would set.


def hub_env(hub: HubServer | None, home, offline: bool = False, token: str | None = None) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1" if offline else "0", HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_ETAG_TIMEOUT="5",
               HF_HUB_DOWNLOAD_TIMEOUT="10", TURBOPACK_DEBUG="")
    env["HF_ENDPOINT"] = hub.url if hub is not None else "http://127.0.0.1:9"  # port 9: nothing listens
    tok = token if token is not None else (hub.token if hub is not None else None)
    if tok:
        env["HF_TOKEN"] = tok
    return env


def run(args: list[str], env: dict, timeout: float = 60):
    """Run ``python args...`` with ``env``; returns the CompletedProcess (text)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)
