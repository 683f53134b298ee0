"""A Hugging Face Hub stand-in on 127.0.0.1 for tests: just the endpoints ``huggingface_hub`` calls to create a
repo, upload a folder in one commit, and resolve/download a file. Test fixture only; the product code talks to
it through the real ``huggingface_hub`` client, pointed here by ``HF_ENDPOINT``.

Users are tokens: ``Bearer <token>`` acts as ``TOKENS[token]``. A repo belongs to its namespace's user; writing
to someone else's repo gets the Hub's 403.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote, urlparse

import yaml


@dataclass
class Repo:
    owner: str
    commits: List[Tuple[str, Dict[str, bytes]]] = field(default_factory=list)  # (sha, files), oldest first

    def files_at(self, revision: str) -> Optional[Tuple[str, Dict[str, bytes]]]:
        if not self.commits:
            return None
        if revision == "main":
            return self.commits[-1]
        return next((c for c in self.commits if c[0] == revision), None)


class FakeHub:
    def __init__(self, tokens: Dict[str, str]) -> None:
        self.tokens = tokens
        self.repos: Dict[str, Repo] = {}
        self.requests: List[Tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def tamper(self, repo_id: str, path: str) -> None:
        """Flip one byte of a file in the latest commit, in place (same commit sha: a corrupted mirror)."""
        files = self.repos[repo_id].commits[-1][1]
        data = bytearray(files[path])
        data[len(data) // 2] ^= 0xFF
        files[path] = bytes(data)

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            # ------------------------------------------------ helpers
            def _user(self) -> Optional[str]:
                auth = self.headers.get("Authorization", "")
                return hub.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _send(self, status: int, payload=None, headers: Optional[Dict[str, str]] = None,
                      body: Optional[bytes] = None, head: bool = False) -> None:
                if body is None:
                    body = json.dumps(payload if payload is not None else {}).encode()
                    headers = {"Content-Type": "application/json", **(headers or {})}
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _error(self, status: int, message: str, code: Optional[str] = None, head: bool = False) -> None:
                headers = {"X-Error-Message": message}
                if code:
                    headers["X-Error-Code"] = code
                self._send(status, {"error": message}, headers=headers, head=head)

            def _writable(self, repo_id: str) -> bool:
                user = self._user()
                if user is None:
                    self._error(401, "Invalid credentials in Authorization header")
                    return False
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._error(404, "Repository not found", "RepoNotFound")
                    return False
                if repo.owner != user:
                    self._error(403, f"You don't have the rights to create a commit in {repo_id}")
                    return False
                return True

            # ------------------------------------------------ routes
            def do_POST(self) -> None:
                hub.requests.append(("POST", self.path))
                path = unquote(urlparse(self.path).path)
                if path == "/api/repos/create":
                    return self._create(json.loads(self._body()))
                if path == "/api/validate-yaml":
                    return self._validate_yaml(json.loads(self._body())["content"])
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/(.+)", path)
                if not m:
                    return self._error(404, f"no route {path}")
                repo_id, what, _revision = m.groups()
                body = self._body()
                if not self._writable(repo_id):
                    return
                if what == "preupload":
                    files = json.loads(body)["files"]
                    return self._send(200, {"files": [dict(path=f["path"], uploadMode="regular", shouldIgnore=False,
                                                           oid=None) for f in files]})
                return self._commit(repo_id, body)

            def _validate_yaml(self, content: str) -> None:
                match = re.match(r"^---\n(.*?)\n---\n", content, re.S)  # the README's front matter
                try:
                    if match is None or not isinstance(yaml.safe_load(match.group(1)), dict):
                        raise yaml.YAMLError("no YAML metadata block at the top of README.md")
                except yaml.YAMLError as e:
                    return self._send(400, {"errors": [{"message": str(e)}], "warnings": []})
                self._send(200, {"errors": [], "warnings": []})

            def _create(self, payload: dict) -> None:
                user = self._user()
                if user is None:
                    return self._error(401, "Invalid credentials in Authorization header")
                namespace = payload.get("organization") or user
                repo_id = f"{namespace}/{payload['name']}"
                if repo_id in hub.repos:  # the Hub's 409 carries the url; exist_ok=True relies on it
                    return self._send(409, {"error": "You already created this model repo",
                                            "url": f"{hub.url}/{repo_id}"})
                if namespace != user:
                    return self._error(403, f"You don't have the rights to create a model under {namespace}")
                hub.repos[repo_id] = Repo(owner=user)
                self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})

            def _commit(self, repo_id: str, body: bytes) -> None:
                repo = hub.repos[repo_id]
                files = dict(repo.commits[-1][1]) if repo.commits else {}
                summary = ""
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "header":
                        summary = item["value"]["summary"]
                    elif item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    else:
                        return self._error(400, f"fake hub does not do {item['key']} operations")
                sha = hashlib.sha1(f"{repo_id}{len(repo.commits)}{summary}".encode()).hexdigest()
                repo.commits.append((sha, files))
                self._send(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{sha}", "commitOid": sha, "success": True})

            def do_GET(self) -> None:
                self._resolve(head=False)

            def do_HEAD(self) -> None:
                self._resolve(head=True)

            def _resolve(self, head: bool) -> None:
                hub.requests.append(("HEAD" if head else "GET", self.path))
                path = unquote(urlparse(self.path).path)
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path)
                if m:
                    repo = hub.repos.get(m.group(1))
                    found = repo.files_at(m.group(2)) if repo else None
                    if found is None:
                        return self._error(404, "Repository not found", "RepoNotFound", head)
                    return self._send(200, {"id": m.group(1), "sha": found[0],
                                            "siblings": [{"rfilename": f} for f in sorted(found[1])]}, head=head)
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if not m:
                    return self._error(404, f"no route {path}", head=head)
                repo_id, revision, filename = m.groups()
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._error(404, "Repository not found", "RepoNotFound", head)
                found = repo.files_at(revision)
                if found is None:
                    return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head)
                sha, files = found
                if filename not in files:
                    return self._error(404, "Entry not found", "EntryNotFound", head)
                data = files[filename]
                etag = hashlib.sha256(data).hexdigest()
                self._send(200, headers={"X-Repo-Commit": sha, "ETag": f'"{etag}"',
                                         "Content-Type": "application/octet-stream"}, body=data, head=head)

        return Handler
