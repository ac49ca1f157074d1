-- A statement's fingerprint (its shape with constants made `?`, see control-plane/src/fingerprint.rs),
-- so "who ran this" finds every run of a statement whatever its values. The projector writes it;
-- rows projected before this migration are filled in by the control plane at startup.
ALTER TABLE commands ADD COLUMN fingerprint text;
CREATE INDEX commands_fingerprint ON commands (fingerprint, event_id);
