"""A local server speaking the Gemini REST API with recorded replies, and the test API key: shared
by the tests of the gemini ER backend and of the gemini planner (google-genai clients pointed at
it through their base URL)."""
import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

KEY = "test-key-123"


def reply_file(path: Path) -> tuple[int, dict, float]:
    """A recorded 200 reply (the JSON body of generateContent)."""
    return 200, json.loads(Path(path).read_text()), 0.0


def text_reply(text: str, delay_s: float = 0.0) -> tuple[int, dict, float]:
    """A 200 generateContent reply whose only candidate answers `text`."""
    return 200, {"candidates": [{"content": {"parts": [{"text": text}], "role": "model"},
                                 "finishReason": "STOP", "index": 0}]}, delay_s


def error(code: int, status: str, message: str) -> tuple[int, dict, float]:
    return code, {"error": {"code": code, "message": message, "status": status}}, 0.0


class ReplayServer:
    """Answers POSTs with queued (status, JSON body, delay_s) replies and keeps the requests."""

    def __init__(self, *replies):
        self.replies, self.requests = queue.Queue(), []
        for r in replies:
            self.replies.put(r)
        self.closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "headers": dict(self.headers),
                                        "body": body})
                try:
                    status, payload, delay = server.replies.get_nowait()
                except queue.Empty:
                    status, payload, delay = error(500, "INTERNAL", "no reply recorded")
                if server.closing.wait(delay):
                    return
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json; charset=UTF-8")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):   # the client gave up
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def prompt(self, i: int = -1) -> str:
        return self.requests[i]["body"]["contents"][0]["parts"][1]["text"]


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    return KEY
