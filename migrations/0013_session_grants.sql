-- The grant that admitted a session and the access it gave (from session.started), so a review
-- can tell which grants were used, and how.
ALTER TABLE sessions ADD COLUMN grant_name text, ADD COLUMN access text;
CREATE INDEX sessions_grant ON sessions (grant_name, resource, started_at);
-- Sessions projected before this version: their grant and access from their stored
-- session.started event.
UPDATE sessions s SET grant_name = e.payload ->> 'grant', access = e.payload ->> 'access'
FROM (SELECT session_id, convert_from(raw, 'UTF8')::jsonb -> 'payload' AS payload FROM events WHERE type = 'session.started') e
WHERE e.session_id = s.id AND s.grant_name IS NULL;
