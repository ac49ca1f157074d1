-- The grant that admitted a session and the access it gave (from session.started), so a review
-- can tell which grants were used, and how.
ALTER TABLE sessions ADD COLUMN grant_name text, ADD COLUMN access text;
CREATE INDEX sessions_grant ON sessions (grant_name, resource, started_at);
