-- A result counts for a command only when it was recorded in the command's own session: a
-- result event from another session (or a row written behind the projector's back) naming a
-- command cannot change what the command log says about it.
DROP VIEW command_log;
CREATE VIEW command_log AS
SELECT c.*, r.outcome, r.tags, r.rows, r.duration_us, r.error_code, r.error_message, r.at AS completed_at
FROM commands c LEFT JOIN command_results r ON r.command_id = c.event_id AND r.session_id = c.session_id;
