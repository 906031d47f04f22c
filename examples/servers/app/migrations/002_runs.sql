-- One row per run of the migrations: each `tug up` that starts `migrate`, and each deploy of
-- `api`, which runs `migrate` first (`deploy.before`).
CREATE TABLE IF NOT EXISTS migration_runs (
    id serial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO migration_runs DEFAULT VALUES;
