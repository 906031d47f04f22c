"""The API: GET / counts the request in Redis and reads the greetings from PostgreSQL.

GET /health answers 200 only when both PostgreSQL and Redis answer (tug's readiness
probe); anything else under / answers JSON:

    {"instance": "api-1", "hits": 2, "greetings": [{"id": 1, "text": "hello from PostgreSQL"}],
     "postgres": "15.18 (Debian 15.18-0+deb12u1)", "redis": "7.0.15"}
"""
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from backends import BackendError, redis, sql

INSTANCE = os.environ.get("TUG_INSTANCE", "api")
QUERY = """SELECT json_build_object(
    'greetings', (SELECT coalesce(json_agg(g ORDER BY g.id), '[]') FROM greetings g),
    'postgres', current_setting('server_version'))"""


def redis_version():
    info = redis("INFO", "server")
    return next((line.split(":", 1)[1] for line in info.splitlines() if line.startswith("redis_version:")), "?")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        try:
            if self.path == "/health":
                if redis("PING") != "PONG" or sql("SELECT 1") != "1":
                    raise BackendError("unexpected answer")
                self.answer(200, {"status": "ok"})
            else:
                hits = redis("INCR", "hits")
                data = json.loads(sql(QUERY))
                self.answer(200, {"instance": INSTANCE, "hits": hits, **data, "redis": redis_version()})
        except BackendError as e:
            self.answer(503, {"error": str(e)})

    def answer(self, status, body):
        data = json.dumps(body).encode() + b"\n"
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass


def main():
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])
    try:
        # Both must answer already: tug starts the API only once they are healthy.
        count = sql("SELECT count(*) FROM greetings")
        print(f"postgres {sql('SHOW server_version')} ({count} greetings), redis {redis_version()}")
    except BackendError as e:
        sys.exit(f"{INSTANCE}: a backend is not ready: {e}")
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    print(f"{INSTANCE} listening on {host}:{port}")
    server.serve_forever()


if __name__ == "__main__":
    main()
