-- Refused connection attempts (auth.failed events), so reviews see failed attempts too.
-- Claims of a token that did not verify are kept as claimed_*: they may be forged.
CREATE TABLE auth_failures (
    event_id          uuid PRIMARY KEY,
    at                timestamptz NOT NULL,
    node              text NOT NULL,
    reason            text NOT NULL,
    code              text NOT NULL,
    client_addr       text NOT NULL,
    client_tls        boolean NOT NULL,
    client_user       text NOT NULL,
    resource          text NOT NULL,
    verified          boolean NOT NULL,
    agent_id          uuid,
    agent_name        text,
    claimed_issuer    text,
    claimed_subject   text
);
CREATE INDEX auth_failures_at ON auth_failures (at DESC);
CREATE INDEX auth_failures_resource ON auth_failures (resource, at DESC);
