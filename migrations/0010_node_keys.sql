-- The keys proxies sign sessions with: seen when a node starts or a session names one, trusted,
-- retired or revoked by an admin (node.decided events) or trusted by the control plane's
-- configuration (not stored here).
CREATE TABLE node_keys (
    key         text PRIMARY KEY,
    node        text NOT NULL,
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,
    status      text NOT NULL DEFAULT 'pending',
    decided_by  text,
    decided_at  timestamptz,
    reason      text
);
