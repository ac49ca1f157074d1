-- People signed in to the console. The cookie holds a random id; only its SHA-256 is kept, so
-- a copy of this table signs no one in.
CREATE TABLE console_sessions (
    id_hash text PRIMARY KEY,
    identity jsonb NOT NULL,
    csrf text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX console_sessions_expires_at ON console_sessions (expires_at);

-- Sign-ins under way: the state sent to the identity provider (kept as its SHA-256) with the
-- PKCE verifier and the nonce the ID token must carry. Used once, for ten minutes at most.
CREATE TABLE console_logins (
    state_hash text PRIMARY KEY,
    -- The SHA-256 of a cookie set in the browser that started the sign-in: the callback counts
    -- only there.
    browser_hash text NOT NULL,
    verifier text NOT NULL,
    nonce text NOT NULL,
    expires_at timestamptz NOT NULL
);
