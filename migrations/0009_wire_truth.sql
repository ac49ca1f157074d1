-- What a SQL EXECUTE ran (prepared statements, masked) and the extended-protocol step judged on
-- its own (parse, bind); when a held command's proxy released it, and to whom it answered.
ALTER TABLE commands ADD COLUMN executes jsonb, ADD COLUMN step text;
ALTER TABLE approvals ADD COLUMN released_at timestamptz, ADD COLUMN released_by text[];

DROP VIEW command_log;
CREATE VIEW command_log AS
SELECT c.*, r.outcome, r.tags, r.rows, r.duration_us, r.error_code, r.error_message, r.at AS completed_at
FROM commands c LEFT JOIN command_results r ON r.command_id = c.event_id;
