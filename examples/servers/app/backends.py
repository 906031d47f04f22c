"""PostgreSQL through `psql`, Redis over a socket: the standard library only.

`DATABASE_URL` (postgresql://user:password@host:port/database) and `REDIS_ADDR`
(host:port) come from the stack's settings. The password goes to `psql` in its
environment (PGPASSWORD), never on its command line.
"""
import os
import socket
import subprocess
from urllib.parse import unquote, urlsplit


class BackendError(Exception):
    pass


def _psql():
    folder = os.environ.get("PG_BIN", "")
    path = os.path.join(folder, "psql")
    return path if folder and os.access(path, os.X_OK) else "psql"


PSQL = _psql()


def pg_env(database=None):
    """libpq's environment for DATABASE_URL, optionally for another database."""
    url = urlsplit(os.environ["DATABASE_URL"])
    env = dict(os.environ)
    env.update(
        PGHOST=url.hostname or "127.0.0.1",
        PGPORT=str(url.port or 5432),
        PGUSER=unquote(url.username or ""),
        PGPASSWORD=unquote(url.password or ""),
        PGDATABASE=database or unquote(url.path.lstrip("/")),
        PGCONNECT_TIMEOUT="3",
        PGAPPNAME=os.environ.get("TUG_INSTANCE", "servers"),
    )
    return env


def sql(query=None, database=None, file=None, timeout=10):
    """Runs SQL with psql (stops at the first error); returns its output, unaligned."""
    args = [PSQL, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    args += ["-f", file] if file else ["-c", query]
    try:
        done = subprocess.run(args, env=pg_env(database), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BackendError(f"psql: {e}") from None
    if done.returncode != 0:
        raise BackendError(done.stderr.strip() or f"psql exited with {done.returncode}")
    return done.stdout.strip()


def redis(*args, timeout=2.0):
    """Sends one command in RESP and returns the reply (an error reply raises)."""
    host, _, port = os.environ["REDIS_ADDR"].rpartition(":")
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as conn:
            conn.sendall(request)
            with conn.makefile("rb") as reader:
                return _reply(reader)
    except OSError as e:
        raise BackendError(f"redis at {host}:{port}: {e}") from None


def _reply(reader):
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise BackendError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise BackendError(f"redis: {rest.decode()}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else reader.read(n + 2)[:-2].decode()
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_reply(reader) for _ in range(n)]
    raise BackendError(f"redis: unexpected reply {line!r}")
