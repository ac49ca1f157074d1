-- Approval requests for held commands (approval.requested), the decisions people made on them
-- (approval.decided) and requests the holding proxy gave up on (approval.expired).
-- `status` is the projected outcome; a pending request past expires_at is reported as expired
-- by the API even before (or without) an approval.expired event, since its proxy refuses it.
CREATE TABLE approvals (
    id               uuid PRIMARY KEY,
    event_id         uuid NOT NULL,
    session_id       uuid NOT NULL,
    command_id       uuid NOT NULL,
    agent_id         uuid NOT NULL,
    agent            jsonb NOT NULL,
    resource         text NOT NULL,
    node             text NOT NULL,
    rule             text NOT NULL,
    statement        text NOT NULL,
    classes          text[] NOT NULL,
    relations        text[] NOT NULL,
    approver_groups  text[] NOT NULL,
    quorum           int NOT NULL,
    requested_at     timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    status           text NOT NULL DEFAULT 'pending',
    decided_at       timestamptz,
    expiry_reason    text
);
CREATE INDEX approvals_status ON approvals (status, requested_at DESC);

CREATE TABLE approval_decisions (
    event_id         uuid PRIMARY KEY,
    approval_id      uuid NOT NULL,
    at               timestamptz NOT NULL,
    verdict          text NOT NULL,
    channel          text NOT NULL,
    reason           text,
    approver_issuer  text NOT NULL,
    approver_subject text NOT NULL,
    approver_name    text NOT NULL,
    approver_groups  text[] NOT NULL
);
CREATE INDEX approval_decisions_approval ON approval_decisions (approval_id, at);
