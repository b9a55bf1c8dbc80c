"""HTTP helpers for a running ComfyUI server (used by the `comfy` fixture and the tests)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A running ComfyUI: HTTP helpers and the paths of its folders."""

    def __init__(self, base: Path, port: int, process: subprocess.Popen, log: Path):
        self.base, self.port, self.process, self.log = base, port, process, log
        self.url = f"http://127.0.0.1:{port}"
        self.models = base / "models"
        self.output = base / "output"
        self.text_encoders = self.models / "text_encoders"

    # -- HTTP --------------------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body=None, timeout: float = 30):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw[:1] in (b"{", b"[") else raw)
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return err.code, json.loads(raw)
            except ValueError:
                return err.code, raw

    def get(self, path: str, timeout: float = 30):
        status, body = self.request("GET", path, timeout=timeout)
        assert status == 200, f"GET {path}: {status} {body!r:.500}"
        return body

    def alive(self) -> bool:
        try:
            return self.request("GET", "/system_stats", timeout=5)[0] == 200
        except OSError:
            return False

    def queue(self, graph: dict) -> tuple[int, dict]:
        """POST /prompt; (status, body) with body["prompt_id"] or body["node_errors"]."""
        return self.request("POST", "/prompt", {"prompt": graph, "client_id": "pytest"})

    def run(self, graph: dict, timeout: float = 300) -> dict:
        """Queue a graph and wait for it; the /history entry (status, outputs). Fails on validation errors."""
        status, body = self.queue(graph)
        assert status == 200 and "prompt_id" in body, f"prompt refused: {json.dumps(body)[:3000]}"
        return self.wait(body["prompt_id"], timeout)

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if self.process.poll() is not None:
                raise AssertionError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.25)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def execution_error(entry: dict) -> dict | None:
    """The `execution_error` message of a finished /history entry, if it failed."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return None


def assert_success(entry: dict):
    err = execution_error(entry)
    assert entry["status"]["status_str"] == "success" and err is None, (
        f"prompt failed: {err and err.get('node_type')}: {err and err.get('exception_message')}\n"
        f"{err and ''.join(err.get('traceback', []))[-3000:]}"
    )
