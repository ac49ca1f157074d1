-- Every approval event names its request, so verification can find a request's decisions,
-- expiry and release in the stored events without trusting the approvals views to point at
-- them (a decision row deleted from the view is still found and reported).
ALTER TABLE events ADD COLUMN approval_id uuid;
UPDATE events SET approval_id = (convert_from(raw, 'UTF8')::jsonb -> 'payload' ->> 'approval_id')::uuid
WHERE type LIKE 'approval.%' AND convert_from(raw, 'UTF8')::jsonb -> 'payload' ->> 'approval_id' IS NOT NULL;
CREATE INDEX events_approval ON events (approval_id) WHERE approval_id IS NOT NULL;
