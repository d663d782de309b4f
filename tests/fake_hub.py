"""A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, for push tests.

It answers the calls huggingface_hub's real client makes to create a repository, a branch and a
commit (files sent inline, "regular" upload mode), and records what it received. Tokens starting
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

            def do_GET(self) -> None:
                hub.requests.append(("GET", self.path))
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
                match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit|branch)/([^?]+)(\?.*)?", self.path)
                if not match:
                    return self._send(404, {"error": f"not served by the fake hub: {self.path}"})
                repo_id, action, revision = match.group(1), match.group(2), match.group(3)
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
                oid = hashlib.sha1(body).hexdigest()
                hub.commits.append({"repo_id": repo_id, "revision": revision, "header": header, "files": files})
                return self._send(200, {"commitUrl": f"http://{self.headers['Host']}/{repo_id}/commit/{oid}",
                                        "commitOid": oid, "pullRequestUrl": None})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
