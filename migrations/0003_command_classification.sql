-- What each command does, from the PostgreSQL parser in the proxy (classes, relations,
-- functions, unbounded writes), or why it did not parse.
ALTER TABLE commands ADD COLUMN classification jsonb, ADD COLUMN parse_error text;
CREATE INDEX commands_classes ON commands USING gin ((classification -> 'classes'));

-- Views bind the columns of `c.*` when created: recreate to include the new ones.
DROP VIEW command_log;
CREATE VIEW command_log AS
SELECT c.*, r.outcome, r.tags, r.rows, r.duration_us, r.error_code, r.error_message, r.at AS completed_at
FROM commands c LEFT JOIN command_results r ON r.command_id = c.event_id;
