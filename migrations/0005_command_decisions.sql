-- The rule behind a denied command, and the policy version that judged each command.
ALTER TABLE commands ADD COLUMN rule text, ADD COLUMN policy_version bigint;
DROP VIEW command_log;
CREATE VIEW command_log AS
SELECT c.*, r.outcome, r.tags, r.rows, r.duration_us, r.error_code, r.error_message, r.at AS completed_at
FROM commands c LEFT JOIN command_results r ON r.command_id = c.event_id;
