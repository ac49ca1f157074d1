-- Projections of the event stream. Every table here can be rebuilt by replaying
-- TOLLGATE_EVENTS; the events table keeps the exact published bytes for chain verification.

CREATE TABLE events (
    id          uuid PRIMARY KEY,
    session_id  uuid NOT NULL,
    seq         bigint NOT NULL,
    type        text NOT NULL,
    at          timestamptz NOT NULL,
    node        text NOT NULL,
    raw         bytea NOT NULL,
    body        jsonb NOT NULL,
    projected_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_session_seq ON events (session_id, seq);

-- Messages on the stream that are not valid events: kept, never dropped.
CREATE TABLE rejected_events (
    id          bigserial PRIMARY KEY,
    subject     text NOT NULL,
    raw         bytea NOT NULL,
    error       text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE agents (
    id          uuid PRIMARY KEY,
    issuer      text NOT NULL,
    subject     text NOT NULL,
    name        text NOT NULL,
    groups      text[] NOT NULL DEFAULT '{}',
    attributes  jsonb NOT NULL DEFAULT '{}',
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,
    UNIQUE (issuer, subject, name)
);

CREATE TABLE sessions (
    id              uuid PRIMARY KEY,
    agent_id        uuid NOT NULL REFERENCES agents (id),
    resource        text NOT NULL,
    resource_kind   text NOT NULL,
    node            text NOT NULL,
    client_addr     text,
    client_tls      boolean,
    client_user     text,
    application_name text,
    upstream        jsonb,
    node_key        text,
    started_at      timestamptz,
    ended_at        timestamptz,
    end_reason      text,
    end_detail      text,
    commands        bigint NOT NULL DEFAULT 0,
    errors          bigint NOT NULL DEFAULT 0,
    events          bigint NOT NULL DEFAULT 0
);
CREATE INDEX sessions_agent ON sessions (agent_id, id DESC);
CREATE INDEX sessions_resource ON sessions (resource, id DESC);
CREATE INDEX sessions_started ON sessions (started_at);

CREATE TABLE commands (
    event_id    uuid PRIMARY KEY,
    session_id  uuid NOT NULL,
    seq         bigint NOT NULL,
    at          timestamptz NOT NULL,
    agent_id    uuid NOT NULL REFERENCES agents (id),
    resource    text NOT NULL,
    protocol    text NOT NULL,
    statement   text NOT NULL,
    params      jsonb,
    prepared    text,
    decision    text NOT NULL
);
CREATE INDEX commands_session ON commands (session_id, seq);
CREATE INDEX commands_agent_at ON commands (agent_id, at);

CREATE TABLE command_results (
    event_id    uuid PRIMARY KEY,
    command_id  uuid NOT NULL,
    session_id  uuid NOT NULL,
    at          timestamptz NOT NULL,
    outcome     text NOT NULL,
    tags        text[] NOT NULL,
    rows        bigint NOT NULL,
    duration_us bigint NOT NULL,
    error_code  text,
    error_message text
);
CREATE INDEX command_results_command ON command_results (command_id);

-- One row per command with its result, when it has one.
CREATE VIEW command_log AS
SELECT c.*, r.outcome, r.tags, r.rows, r.duration_us, r.error_code, r.error_message, r.at AS completed_at
FROM commands c LEFT JOIN command_results r ON r.command_id = c.event_id;

-- Review view: what each agent did on each resource.
CREATE VIEW activity_by_agent_resource AS
SELECT s.agent_id, a.name AS agent_name, a.issuer, a.subject, s.resource,
       count(*) AS sessions, sum(s.commands) AS commands, sum(s.errors) AS errors,
       min(s.started_at) AS first_session, max(s.started_at) AS last_session
FROM sessions s JOIN agents a ON a.id = s.agent_id
GROUP BY s.agent_id, a.name, a.issuer, a.subject, s.resource;
