CREATE TABLE IF NOT EXISTS greetings (
    id integer PRIMARY KEY,
    text text NOT NULL
);
INSERT INTO greetings (id, text) VALUES (1, 'hello from PostgreSQL') ON CONFLICT (id) DO NOTHING;
