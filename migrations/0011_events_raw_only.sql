-- An event is kept once, as the exact bytes published (what the chain hashes); readers parse
-- those. A second, parsed copy cost the projector a JSON parse and a jsonb write per event,
-- and could disagree with the bytes it was parsed from.
ALTER TABLE events DROP COLUMN body;
