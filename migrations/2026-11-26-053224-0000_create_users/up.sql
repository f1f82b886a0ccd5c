-- Accounts allowed to connect. Times are milliseconds since the Unix epoch.
CREATE TABLE users (
    username TEXT PRIMARY KEY NOT NULL,
    -- Argon2id PHC string: $argon2id$v=19$m=...,t=...,p=...$salt$hash
    password_hash TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
