"""A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, for push and download tests.

It answers the calls huggingface_hub's real client makes to create a repository (model or Space),
a branch and a commit (files sent inline, "regular" upload mode), and records what it received.
Commits may delete files. What was committed can be listed (the file tree) and, for a model
repository, downloaded again: repository info and /resolve/ of each file, what snapshot_download
and hf_hub_download ask for. (Branches are recorded, not kept apart: every revision shows the
same files.) Tokens starting
with `hf_read` are read-only; a repository id containing `fail` rejects its commit.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List

import yaml


class FakeHub:
    def __init__(self) -> None:
        self.repos: Dict[str, Dict[str, Any]] = {}
        self.commits: List[Dict[str, Any]] = []
        self.branches: List[tuple] = []
        self.requests: List[tuple] = []
        self.authorizations: List[str] = []
        self.validated: List[str] = []
        self.stored: Dict[str, Dict[str, bytes]] = {}  # repository id -> path -> bytes, all commits merged
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    data = gzip.decompress(data)
                return data

            def _send(self, status: int, payload: Any) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _token(self) -> str:
                auth = self.headers.get("Authorization") or ""
                hub.authorizations.append(auth)
                return auth[len("Bearer "):] if auth.startswith("Bearer ") else ""

            def _stored_file(self) -> tuple:
                match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", self.path.split("?")[0])
                if not match or match.group(2) not in hub.stored.get(match.group(1), {}):
                    return None, None
                return match.group(1), hub.stored[match.group(1)][match.group(2)]

            def _send_file(self, with_body: bool) -> None:
                repo_id, content = self._stored_file()
                if repo_id is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", hub.sha(repo_id))
                self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if with_body:
                    self.wfile.write(content)

            def do_HEAD(self) -> None:
                hub.requests.append(("HEAD", self.path))
                self._send_file(with_body=False)

            def do_GET(self) -> None:
                hub.requests.append(("GET", self.path))
                info = re.fullmatch(r"/api/models/([^/]+/[^/]+)(/revision/[^?]+)?(\?.*)?", self.path)
                if info and info.group(1) in hub.stored:
                    repo_id = info.group(1)
                    return self._send(200, {"id": repo_id, "modelId": repo_id, "sha": hub.sha(repo_id), "private": False,
                                            "siblings": [{"rfilename": name} for name in sorted(hub.stored[repo_id])]})
                tree = re.fullmatch(r"/api/(models|spaces)/([^/]+/[^/]+)/tree/[^?]+(\?.*)?", self.path)
                if tree and (tree.group(2) in hub.stored or tree.group(2) in hub.repos):
                    return self._send(200, [{"type": "file", "path": name, "size": len(content),
                                             "oid": hashlib.sha1(content).hexdigest()}
                                            for name, content in sorted(hub.stored.get(tree.group(2), {}).items())])
                if "/resolve/" in self.path:
                    return self._send_file(with_body=True)
                if self.path.startswith("/api/whoami-v2"):
                    token = self._token()
                    if not token.startswith("hf_"):
                        return self._send(401, {"error": "Invalid credentials in Authorization header"})
                    role = "read" if token.startswith("hf_read") else "write"
                    return self._send(200, {"type": "user", "name": "tester", "auth": {"type": "access_token",
                                                                                          "accessToken": {"role": role}}})
                return self._send(404, {"error": f"not served by the fake hub: {self.path}"})

            def do_POST(self) -> None:
                body = self._body()
                hub.requests.append(("POST", self.path))
                token = self._token()
                if not token.startswith("hf_") or token.startswith("hf_read"):
                    return self._send(401 if not token else 403, {"error": "write access needed"})
                if self.path == "/api/validate-yaml":
                    # The client checks a README's front matter before committing it.
                    content = json.loads(body)["content"]
                    front = content.split("---")[1] if content.startswith("---") else ""
                    try:
                        yaml.safe_load(front)
                    except yaml.YAMLError as err:
                        return self._send(400, {"errors": [{"message": str(err)}]})
                    hub.validated.append(content)
                    return self._send(200, {"errors": [], "warnings": []})
                if self.path == "/api/repos/create":
                    payload = json.loads(body)
                    repo_id = f"{payload.get('organization') or 'tester'}/{payload['name']}"
                    if repo_id in hub.repos:
                        return self._send(409, {"error": "You already created this model repo"})
                    hub.repos[repo_id] = payload
                    return self._send(200, {"url": f"http://{self.headers['Host']}/{repo_id}"})
                match = re.fullmatch(r"/api/(models|spaces)/([^/]+/[^/]+)/(preupload|commit|branch)/([^?]+)(\?.*)?",
                                     self.path)
                if not match:
                    return self._send(404, {"error": f"not served by the fake hub: {self.path}"})
                repo_type, repo_id, action, revision = match.group(1), match.group(2), match.group(3), match.group(4)
                if repo_id not in hub.repos:
                    return self._send(404, {"error": f"Repository not found: {repo_id}"})
                if action == "branch":
                    hub.branches.append((repo_id, revision))
                    return self._send(200, {})
                if action == "preupload":
                    files = json.loads(body)["files"]
                    return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False} for f in files]})
                if "fail" in repo_id:
                    return self._send(403, {"error": "commit rejected by the fake hub"})
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                header = next(item["value"] for item in lines if item["key"] == "header")
                files = {
                    item["value"]["path"]: base64.b64decode(item["value"]["content"])
                    for item in lines if item["key"] == "file"
                }
                deleted = [item["value"]["path"] for item in lines if item["key"] == "deletedFile"]
                oid = hashlib.sha1(body).hexdigest()
                hub.commits.append({"repo_id": repo_id, "repo_type": repo_type[:-1], "revision": revision,
                                    "header": header, "files": files, "deleted": deleted})
                stored = hub.stored.setdefault(repo_id, {})
                stored.update(files)
                for path in deleted:
                    stored.pop(path, None)
                return self._send(200, {"commitUrl": f"http://{self.headers['Host']}/{repo_id}/commit/{oid}",
                                        "commitOid": oid, "pullRequestUrl": None})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def sha(self, repo_id: str) -> str:
        """The repository's commit id: a hash of its files, so it changes with every commit that changes them."""
        digest = hashlib.sha1()
        for name, content in sorted(self.stored.get(repo_id, {}).items()):
            digest.update(name.encode() + hashlib.sha1(content).digest())
        return digest.hexdigest()

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
