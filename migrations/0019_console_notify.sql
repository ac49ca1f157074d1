-- Live console pages: a notification on channel `tollgate_console` whenever what the approvals
-- inbox or the live sessions list shows changes (PostgreSQL sends one per transaction and
-- payload, so a projected batch makes at most one of each). Every control plane replica
-- listens, whichever projected the change.
CREATE FUNCTION tollgate_console_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tollgate_console', TG_ARGV[0]);
    RETURN NULL;
END $$;

CREATE TRIGGER approvals_notify AFTER INSERT OR UPDATE ON approvals
    FOR EACH ROW EXECUTE FUNCTION tollgate_console_notify('approvals');
CREATE TRIGGER approval_decisions_notify AFTER INSERT ON approval_decisions
    FOR EACH ROW EXECUTE FUNCTION tollgate_console_notify('approvals');
-- Sessions change with every projected command (counters): only a start or an end is news.
CREATE TRIGGER sessions_insert_notify AFTER INSERT ON sessions
    FOR EACH ROW EXECUTE FUNCTION tollgate_console_notify('sessions');
CREATE TRIGGER sessions_update_notify AFTER UPDATE ON sessions
    FOR EACH ROW WHEN (OLD.started_at IS DISTINCT FROM NEW.started_at OR OLD.ended_at IS DISTINCT FROM NEW.ended_at)
    EXECUTE FUNCTION tollgate_console_notify('sessions');
