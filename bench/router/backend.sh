#!/bin/sh
# One benchmark backend: a single nginx process (no master, one worker loop) answering
# `return 200 "ok"` on 127.0.0.1:PORT. The same program sits behind every target of
# bench/router.sh: the harness starts three for nginx and HAProxy, and tug starts three
# as the instances of the generated stack (which give it `$PORT`).
#
# Usage: backend.sh [PORT]   (default: $PORT). Config and pid under $BACKEND_DIR/PORT.
set -eu
port=${1:-${PORT:?backend.sh: give a port or set PORT}}
dir=${BACKEND_DIR:-/tmp/tug-bench-backend}/$port
mkdir -p "$dir"
cat > "$dir/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log stderr error;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  client_body_temp_path $dir/tmp; proxy_temp_path $dir/tmp; fastcgi_temp_path $dir/tmp;
  uwsgi_temp_path $dir/tmp; scgi_temp_path $dir/tmp;
  server {
    listen 127.0.0.1:$port;
    location / { return 200 "ok"; }
  }
}
CONF
exec nginx -p "$dir" -e stderr -c "$dir/nginx.conf"
