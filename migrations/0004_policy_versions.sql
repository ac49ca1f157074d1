-- Every policy version (from policy.changed events): who changed what, and the document.
CREATE TABLE policy_versions (
    version      bigint PRIMARY KEY,
    event_id     uuid NOT NULL UNIQUE,
    changed_by   text NOT NULL,
    changed_by_issuer text NOT NULL,
    changed_at   timestamptz NOT NULL,
    comment      text,
    changes      jsonb NOT NULL,
    document     jsonb NOT NULL
);
