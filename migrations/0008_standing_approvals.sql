-- Time-boxed approvals: an approver may approve "for N minutes" (approval_decisions), and a
-- pipeline may ask ahead of its run for N minutes (approvals).
ALTER TABLE approvals ADD COLUMN grant_minutes int;
ALTER TABLE approval_decisions ADD COLUMN grant_minutes int;
