#!/bin/sh
# Creates the application role and database once, then applies every migration in order.
set -eu
admin="psql -v ON_ERROR_STOP=1 -h 127.0.0.1 -p ${POSTGRES_PORT} -U postgres -d postgres -qtA"
if [ "$($admin -c "SELECT 1 FROM pg_roles WHERE rolname = 'app'")" != 1 ]; then
  $admin -c "CREATE ROLE app LOGIN PASSWORD '${POSTGRES_PASSWORD}'"
  $admin -c "CREATE DATABASE app OWNER app"
fi
for file in migrations/*.sql; do
  psql -v ON_ERROR_STOP=1 -q "$DATABASE_URL" -f "$file"
done
