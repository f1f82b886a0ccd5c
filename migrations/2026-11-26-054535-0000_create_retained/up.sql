-- The retained message of each topic, restored into the registry at start-up. Times are
-- milliseconds since the Unix epoch.
CREATE TABLE retained (
    topic TEXT PRIMARY KEY NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    -- The forwarded MQTT 5 properties as an encoded property block, Property Length included.
    properties BLOB NOT NULL,
    -- NULL: the message never expires.
    expires_at_ms BIGINT,
    -- Client identifier of the publisher.
    publisher TEXT NOT NULL,
    stored_at_ms BIGINT NOT NULL
);
