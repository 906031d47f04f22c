#!/usr/bin/env python3
"""A raw HTTP/1.1 backend for the router's edge tests: records exactly what arrives.

Listens on 127.0.0.1:$PORT. Each request it reads (head, then a body framed by Content-Length
or chunked encoding, as the head says) is appended to $RECORD as one JSON line: the instance,
the raw head, the raw body. Then it answers 200 "ok", unless the path starts with /die: then
the process exits at once without answering (an instance killed with the request in flight).
Bytes it cannot frame are recorded as they are ("unframed") and the connection is closed.
"""
import json
import os
import socket
import threading

RECORD = os.environ["RECORD"]
INSTANCE = os.environ.get("TUG_INSTANCE", "?")
lock = threading.Lock()


def record(entry):
    entry["instance"] = INSTANCE
    line = json.dumps(entry) + "\n"
    with lock:
        with open(RECORD, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def read_until(conn, buf, marker):
    while marker not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return buf, False
        buf += chunk
    return buf, True


def serve(conn):
    buf = b""
    conn.settimeout(10)
    try:
        while True:
            buf, ok = read_until(conn, buf, b"\r\n\r\n")
            if not ok:
                if buf:
                    record({"unframed": buf.decode("latin-1")})
                return
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            fields = [l.split(":", 1) for l in lines[1:]]
            names = [f[0].strip().lower() for f in fields]
            values = {f[0].strip().lower(): f[1].strip() if len(f) > 1 else "" for f in fields}
            body = b""
            if "chunked" in values.get("transfer-encoding", "").lower():
                while True:
                    buf, ok = read_until(conn, buf, b"\r\n")
                    if not ok:
                        record({"head": head.decode("latin-1"), "unframed": buf.decode("latin-1")})
                        return
                    size_line, buf = buf.split(b"\r\n", 1)
                    size = int(size_line.split(b";")[0], 16)
                    while len(buf) < size + 2:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                    body += buf[:size]
                    buf = buf[size + 2:]
                    if size == 0:
                        break
            elif "content-length" in names:
                length = int(values["content-length"])
                while len(buf) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                body, buf = buf[:length], buf[length:]
            record({"head": head.decode("latin-1"), "body": body.decode("latin-1")})
            target = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else ""
            if target.startswith("/die"):
                os._exit(1)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    except (OSError, ValueError) as e:
        if buf:
            record({"unframed": buf.decode("latin-1"), "error": str(e)})
    finally:
        conn.close()


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(os.environ["PORT"])))
listener.listen(128)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
