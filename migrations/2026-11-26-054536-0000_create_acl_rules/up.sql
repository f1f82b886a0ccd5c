-- Authorization rules (see src/acl.rs for how they are evaluated). Times are milliseconds
-- since the Unix epoch.
CREATE TABLE acl_rules (
    -- AUTOINCREMENT: the id of a removed rule is never reused, so `acl remove ID` cannot hit
    -- a rule added after the operator listed them.
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    subject_kind TEXT NOT NULL CHECK (subject_kind IN ('user', 'client', 'all')),
    -- The username or client identifier; NULL exactly when subject_kind is 'all'.
    subject TEXT CHECK ((subject IS NULL) = (subject_kind = 'all')),
    action TEXT NOT NULL CHECK (action IN ('publish', 'subscribe', 'receive')),
    permission TEXT NOT NULL CHECK (permission IN ('allow', 'deny')),
    -- A topic filter; a level that is exactly %u or %c stands for the username or client id.
    topic TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- LoadAcl looks rules up by subject on every CONNECT.
CREATE INDEX acl_rules_subject ON acl_rules (subject_kind, subject);
