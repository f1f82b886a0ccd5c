-- Persistent sessions (Session Expiry Interval > 0) and their QoS 1/2 messages, restored into
-- the registry at start-up (see src/persist.rs and src/db/sessions.rs). Times are milliseconds
-- since the Unix epoch.
CREATE TABLE sessions (
    client_id TEXT PRIMARY KEY NOT NULL,
    -- Session Expiry Interval, seconds; 4294967295 (0xFFFFFFFF) = never expires.
    expiry_interval BIGINT NOT NULL,
    -- NULL: connected (or still connected when the broker crashed). A session whose
    -- connection ended and that never expires holds 9223372036854775807 (i64::MAX).
    expires_at_ms BIGINT,
    -- The Will, all NULL when there is none (or once it is gone). will_properties are the
    -- forwarded properties as an encoded property block, like retained.properties.
    will_topic TEXT,
    will_payload BLOB,
    will_qos INTEGER,
    will_retain BOOLEAN,
    will_properties BLOB,
    -- Will Message Expiry Interval, seconds; NULL: none.
    will_expiry_interval BIGINT,
    -- Will Delay Interval, seconds.
    will_delay BIGINT NOT NULL DEFAULT 0,
    -- When the Will is due, once the connection has ended; NULL while connected.
    will_at_ms BIGINT
);

CREATE TABLE session_subscriptions (
    client_id TEXT NOT NULL REFERENCES sessions (client_id) ON DELETE CASCADE,
    -- Exactly as subscribed, $share/... included.
    filter TEXT NOT NULL,
    -- Granted QoS.
    qos INTEGER NOT NULL,
    no_local BOOLEAN NOT NULL,
    retain_as_published BOOLEAN NOT NULL,
    -- 0, 1 or 2 as on the wire (§3.8.3.1).
    retain_handling INTEGER NOT NULL,
    -- Subscription Identifier; NULL: none.
    identifier BIGINT,
    PRIMARY KEY (client_id, filter)
) WITHOUT ROWID;

-- Each queued message once, however many sessions it is queued for.
CREATE TABLE messages (
    -- Assigned by the broker (StoredState::next_message_id), not by SQLite.
    id INTEGER PRIMARY KEY NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    -- QoS and RETAIN as published.
    qos INTEGER NOT NULL,
    retain BOOLEAN NOT NULL,
    -- The forwarded properties as an encoded property block, like retained.properties.
    properties BLOB NOT NULL,
    -- NULL: the message never expires.
    expires_at_ms BIGINT,
    -- Client identifier of the publisher.
    publisher TEXT NOT NULL
);

-- The outbound QoS 1/2 messages of each session, queued or in flight.
CREATE TABLE session_messages (
    client_id TEXT NOT NULL REFERENCES sessions (client_id) ON DELETE CASCADE,
    packet_id INTEGER NOT NULL,
    -- Queue order within the session.
    seq BIGINT NOT NULL,
    message_id BIGINT NOT NULL REFERENCES messages (id),
    -- The QoS and RETAIN flag this session receives it with.
    qos INTEGER NOT NULL,
    retain BOOLEAN NOT NULL,
    -- Subscription Identifiers in decimal, comma-separated ('' for none), e.g. '1,17'.
    subscription_ids TEXT NOT NULL,
    -- PUBREC received: PUBREL is owed, not the PUBLISH.
    released BOOLEAN NOT NULL DEFAULT 0,
    PRIMARY KEY (client_id, packet_id)
) WITHOUT ROWID;

-- Finds whether a message is still referenced: the foreign key check when a message row is
-- deleted, and the garbage collection of unreferenced messages.
CREATE INDEX session_messages_message_id ON session_messages (message_id);

-- Inbound QoS 2 packet ids awaiting PUBREL.
CREATE TABLE inbound_qos2 (
    client_id TEXT NOT NULL REFERENCES sessions (client_id) ON DELETE CASCADE,
    packet_id INTEGER NOT NULL,
    PRIMARY KEY (client_id, packet_id)
) WITHOUT ROWID;

-- One row: when the broker last committed a batch, to date the end of the sessions that were
-- connected when it crashed.
CREATE TABLE broker_state (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    last_alive_ms BIGINT NOT NULL
);
