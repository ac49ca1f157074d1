-- The kind of resource a refused login asked for (postgres, ssh...), so the per-resource review
-- lists resources only refused logins reached.
ALTER TABLE auth_failures ADD COLUMN resource_kind text;
UPDATE auth_failures f SET resource_kind = convert_from(e.raw, 'UTF8')::jsonb -> 'resource' ->> 'kind'
FROM events e WHERE e.id = f.event_id;
