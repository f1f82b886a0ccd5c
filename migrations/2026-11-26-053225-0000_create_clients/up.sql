-- What the broker last saw of each client id, one row per id. Times are milliseconds since
-- the Unix epoch; disconnected_at_ms IS NULL means the connection is (or was left) open.
CREATE TABLE clients (
    client_id TEXT PRIMARY KEY NOT NULL,
    -- Distinguishes successive connections of one client id, so that a late disconnect of a
    -- taken-over connection does not close its successor's row.
    connection_id BIGINT NOT NULL,
    username TEXT,
    address TEXT NOT NULL,
    protocol_version INTEGER NOT NULL,
    connected_at_ms BIGINT NOT NULL,
    disconnected_at_ms BIGINT,
    disconnect_reason TEXT
);

CREATE INDEX clients_disconnected_at_ms ON clients (disconnected_at_ms);
