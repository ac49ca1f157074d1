-- Where each approval request was announced in Slack, so the message can show the outcome.
CREATE TABLE approval_messages (
    approval_id  uuid PRIMARY KEY,
    channel      text NOT NULL,
    ts           text NOT NULL
);

-- Signatures of accepted Slack callbacks and inbound webhooks: a replayed request (same body,
-- same signature, within the 5-minute window) is refused.
CREATE TABLE seen_signatures (
    signature    text PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now()
);

-- Decision attempts that were refused (bad signature, unknown person, own request, twice...).
CREATE TABLE approval_refusals (
    event_id     uuid PRIMARY KEY,
    approval_id  uuid,
    at           timestamptz NOT NULL,
    channel      text NOT NULL,
    status       int NOT NULL,
    reason       text NOT NULL,
    who          text
);
CREATE INDEX approval_refusals_approval ON approval_refusals (approval_id, at);
