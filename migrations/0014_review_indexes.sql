-- Indexes for the review reports: commands by time (the reports read a period across every
-- agent), approvals by the command they hold and by when they were asked.
CREATE INDEX commands_at ON commands (at);
CREATE INDEX approvals_command ON approvals (command_id);
CREATE INDEX approvals_requested ON approvals (requested_at);
-- Who ran this: statements by their text (hashed: a statement may be longer than a B-tree
-- entry may hold).
CREATE INDEX commands_statement ON commands (md5(statement));
