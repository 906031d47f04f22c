"""Creates the database if it is missing, then applies migrations/*.sql in order.

Every migration is idempotent (IF NOT EXISTS, ON CONFLICT), so running this at each
start is safe.
"""
import os
import sys
from urllib.parse import unquote, urlsplit

from backends import BackendError, sql

database = unquote(urlsplit(os.environ["DATABASE_URL"]).path.lstrip("/"))
try:
    exists = sql(f"SELECT 1 FROM pg_database WHERE datname = '{database}'", database="postgres")
    if exists != "1":
        sql(f'CREATE DATABASE "{database}"', database="postgres")
        print(f"created database {database}")
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")
    for name in sorted(n for n in os.listdir(folder) if n.endswith(".sql")):
        sql(file=os.path.join(folder, name))
        print(f"applied {name}")
except BackendError as e:
    sys.exit(f"migrate: {e}")
print("migrations done")
