"""Genesis API: answers with its instance name; /health for readiness, /live for liveness."""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INSTANCE = os.environ.get("TUG_INSTANCE", "api")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path in ("/health", "/live"):
            body = b"ok\n"
        else:
            body = json.dumps({"instance": INSTANCE, "revision": os.environ.get("TUG_REVISION")}).encode() + b"\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        if os.environ.get("LOG_LEVEL") == "DEBUG":
            super().log_message(format, *args)


ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])), Handler).serve_forever()
