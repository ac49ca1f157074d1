//! Payloads of the event types. Values that came from an agent (statement text, parameters) are
//! recorded as text; nothing here ever holds a credential.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use uuid::Uuid;

/// `session.started`: an agent was authenticated and a session opened for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionStarted {
    /// The agent's address as the proxy saw it.
    pub client_addr: String,
    /// Whether the agent's connection to the proxy was encrypted.
    pub client_tls: bool,
    /// The `user` the agent's client sent (informational: the proxy logs in as its own user).
    pub client_user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_name: Option<String>,
    /// Where the proxy connects, without any credential.
    pub upstream: UpstreamTarget,
    /// Public half of the node key that signs `session.ended`, hex.
    pub node_key: String,
    /// The policy version that admitted the session, the grant that did, and its access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<crate::policy::Access>,
}

/// The upstream a session is relayed to, as recorded (never with a credential).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpstreamTarget {
    pub host: String,
    pub port: u16,
    /// The database (PostgreSQL only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    pub user: String,
}

/// How a PostgreSQL statement reached the proxy.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// A simple `Query` message (may hold several statements).
    Simple,
    /// `Parse`/`Bind`/`Execute` of the extended protocol.
    Extended,
    /// An SSH exec request: the command line a host's shell runs.
    Exec,
    /// A connection an SSH agent forwards through the host (`ssh -L`): `forward host:port`.
    Forward,
    /// An sftp operation (sftp, scp): `open /path write`, `remove /path`, `rename /a /b`...
    Sftp,
    /// An SSH shell: `<shell>` when it opens, then each line the agent typed into it.
    Shell,
}

/// What the proxy decided about a command before forwarding it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
    Hold,
}

/// What a statement (or a multi-statement string) does, from the real PostgreSQL parser.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classification {
    /// Number of top-level statements.
    pub statements: usize,
    /// Classes present anywhere in the tree, e.g. `select`, `delete`, `drop`, `copy_program`.
    pub classes: BTreeSet<String>,
    /// Relations referenced (`schema.name` when qualified).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub relations: BTreeSet<String>,
    /// Functions called (both `schema.name` and bare `name` when qualified), lower case.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub functions: BTreeSet<String>,
    /// A write no condition bounds appears somewhere: UPDATE or DELETE without WHERE or with
    /// one the same for every row (`true`, `1 = 1`, `x = x`, `OR true`, only other relations'
    /// columns), a MERGE action the join and its own condition leave unbounded, an
    /// `INSERT ... SELECT ... ON CONFLICT DO UPDATE` without a bounding WHERE; in CTEs and
    /// function bodies too. A statement under `EXPLAIN` without `ANALYZE` writes nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unbounded_write: bool,
    /// Something other than reading (conservative: unknown statements count as writes).
    pub writes: bool,
    /// Turns a read-only transaction or session read-write (`SET default_transaction_read_only`,
    /// `BEGIN READ WRITE`, `SET SESSION CHARACTERISTICS ...`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub escapes_read_only: bool,
}

/// `command`: one statement (or request, or exec) an agent sent, recorded before it runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(from = "CommandWire")]
pub struct Command {
    /// How it reached the gateway (which also says which protocol it belongs to).
    pub protocol: Protocol,
    /// The command as the upstream runs it: a SQL text, a command line, a shell input line.
    pub statement: String,
    /// What only a PostgreSQL statement carries; absent when it carried none of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PgCommand>,
    /// What the statement does; absent when it did not parse (see `parse_error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<Classification>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parse_error: Option<String>,
    pub decision: Decision,
    /// The rule behind a `deny` (e.g. `deny_classes:drop`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The policy version that judged the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u64>,
    /// For a held command: the approval request that holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<Uuid>,
    /// What masking replaced in `statement`, `postgres.params`, `postgres.executes` and
    /// `parse_error` (they are recorded masked; the upstream receives them as the agent sent them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked: Vec<MaskCount>,
}

/// A `command` payload as stored: today's layout, or the one before the PostgreSQL-only fields
/// moved under `postgres` (they were top-level), so events recorded then still read in full.
#[derive(Deserialize)]
struct CommandWire {
    protocol: Protocol,
    statement: String,
    #[serde(default)]
    postgres: Option<PgCommand>,
    #[serde(default)]
    params: Option<Vec<Option<String>>>,
    #[serde(default)]
    prepared: Option<String>,
    #[serde(default)]
    executes: Vec<Executed>,
    #[serde(default)]
    step: Option<Step>,
    #[serde(default)]
    classification: Option<Classification>,
    #[serde(default)]
    parse_error: Option<String>,
    decision: Decision,
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    policy_version: Option<u64>,
    #[serde(default)]
    approval_id: Option<Uuid>,
    #[serde(default)]
    masked: Vec<MaskCount>,
}

impl From<CommandWire> for Command {
    fn from(w: CommandWire) -> Self {
        let earlier =
            PgCommand { params: w.params, prepared: w.prepared, executes: w.executes, step: w.step, row_limit: None };
        Command {
            protocol: w.protocol,
            statement: w.statement,
            postgres: w.postgres.or_else(|| earlier.unless_empty()),
            classification: w.classification,
            parse_error: w.parse_error,
            decision: w.decision,
            rule: w.rule,
            policy_version: w.policy_version,
            approval_id: w.approval_id,
            masked: w.masked,
        }
    }
}

impl Command {
    /// A command judged `decision`, with nothing else known about it yet.
    pub fn new(protocol: Protocol, statement: String, decision: Decision) -> Self {
        Command {
            protocol,
            statement,
            postgres: None,
            classification: None,
            parse_error: None,
            decision,
            rule: None,
            policy_version: None,
            approval_id: None,
            masked: Vec::new(),
        }
    }
}

/// The parts of a command only PostgreSQL has.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PgCommand {
    /// Bind parameters in text form (`None` = SQL NULL); binary ones as `\x` hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Vec<Option<String>>>,
    /// Name of the prepared statement, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared: Option<String>,
    /// The prepared statements a SQL `EXECUTE` in the statement runs, as the server stores
    /// them (masked); judged as part of this command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub executes: Vec<Executed>,
    /// Extended protocol: the message judged when it was not an Execute (a statement refused
    /// when it was prepared, or a Bind of a statement the proxy does not know).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<Step>,
    /// Run under this row limit (`max_rows_written`): inside a transaction or savepoint the
    /// proxy controls, committed only when the server's count is within it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_limit: Option<u64>,
}

impl PgCommand {
    /// `None` when there is nothing to say (a plain simple-protocol statement).
    pub fn unless_empty(self) -> Option<Self> {
        (self != PgCommand::default()).then_some(self)
    }
}

/// A prepared statement run by a SQL `EXECUTE`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Executed {
    pub name: String,
    /// Its text as the server stores it (the whole message that prepared it), masked.
    pub statement: String,
}

/// An extended-protocol message judged on its own.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// A Parse: a statement is judged when it is prepared; a denied one is never prepared.
    Parse,
    /// A Bind of a prepared statement the proxy does not know: refused.
    Bind,
    /// A statement the proxy itself ran to hold the agent's write to `max_rows_written`
    /// (`BEGIN`, `SAVEPOINT`, `COMMIT`, `RELEASE`, `ROLLBACK`), recorded like any other.
    RowLimit,
}

/// How many values one detector (or a column rule: detector `column`) masked, in one column
/// when the values came from a result column. Never the values themselves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MaskCount {
    pub detector: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    pub count: u64,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It completed (every statement of a simple query, or the portal of an Execute).
    Ok,
    /// The upstream answered with an error.
    Error,
    /// An Execute reached its row limit; the portal can be resumed.
    Suspended,
    /// The upstream skipped it because an earlier message of the same pipeline failed.
    Skipped,
    /// The session ended before the upstream answered.
    Unfinished,
}

/// An error as the upstream reported it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
}

/// `command.result`: how one recorded command ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommandResult {
    /// The `command` event this result belongs to.
    pub command_id: Uuid,
    pub command_seq: u64,
    pub outcome: Outcome,
    /// Command tags, one per completed statement (`SELECT 3`, `COPY 10`...).
    pub tags: Vec<String>,
    /// Rows returned or affected, summed over the tags (DataRow count when no tag says).
    pub rows: u64,
    /// From forwarding the command to its completion, microseconds.
    pub duration_us: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// What masking replaced in what the upstream sent back (rows, COPY data, errors, notices).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked: Vec<MaskCount>,
    /// Binary-format values that held a finding: they cannot carry a marker, so they became NULL.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nulled: u64,
    /// A command run on a host (SSH): how its program ended and what it wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecOutput>,
    /// A forwarded connection (SSH): bytes each way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded: Option<Forwarded>,
    /// An sftp operation (SSH): bytes read from and written to the file it opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileBytes>,
}

/// Bytes an sftp client read from and wrote to one open file.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileBytes {
    pub read: u64,
    pub written: u64,
}

/// Bytes a forwarded connection carried, each way.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Forwarded {
    pub to_destination: u64,
    pub to_agent: u64,
}

/// How a program run on a host ended, and what it wrote back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecOutput {
    /// Its exit status; absent when it ended by a signal or the session ended first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<u32>,
    /// The signal that ended it, when one did (`TERM`, `KILL`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<String>,
    /// Bytes it wrote to standard output and to standard error, as the host sent them.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// The start of its output (both streams, in arrival order) as the agent received it, masked.
    pub sample: String,
}

/// `terminal.started`: a shell opened on an SSH channel; its output follows in
/// `terminal.output` chunks that together are an asciicast v2 recording.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TerminalStarted {
    /// The shell's number in its session, from 0.
    pub terminal: u32,
    /// The `<shell>` command event that opened it.
    pub command_id: Uuid,
    /// The terminal type the agent asked for (`TERM`); absent without a pty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
    pub width: u32,
    pub height: u32,
}

/// `terminal.output`: a stretch of a shell's output, masked, as asciicast v2 frames.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TerminalOutput {
    pub terminal: u32,
    pub frames: Vec<Frame>,
}

/// One asciicast v2 event: seconds since the shell opened, `o` (output) or `r` (resize,
/// `COLSxROWS`), and its data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Frame(pub f64, pub String, pub String);

/// `certificate.issued`: the gateway's SSH CA signed a user certificate for an agent, in
/// exchange for its verified token (a one-event chain of its own).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CertificateIssued {
    /// The certificate's serial, hex.
    pub serial: String,
    pub key_id: String,
    /// The SSH resources it may log in to.
    pub principals: Vec<String>,
    /// Its validity, Unix seconds.
    pub valid_after: u64,
    pub valid_before: u64,
    /// The SHA-256 fingerprint of the agent's public key it certifies.
    pub public_key: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The agent said goodbye (Terminate) or closed its connection.
    ClientClosed,
    /// The upstream closed the connection.
    UpstreamClosed,
    /// The proxy could not open or log in to the upstream.
    UpstreamFailed,
    /// A command could not be recorded, so the session was closed without running it.
    RecordingFailed,
    /// The agent sent something the proxy refuses to relay.
    ProtocolViolation,
    /// The proxy is shutting down.
    Shutdown,
    /// A person ended it (`session.end_requested`, signed by the control plane); `detail`
    /// names them and their reason.
    EndedByPerson,
}

/// `session.ended`: the last event of a session. `head` is the hash of the event before it and
/// `signature` is the node key's ed25519 signature over [`crate::event::signing_message`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionEnded {
    pub reason: EndReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub commands: u64,
    pub head: String,
    pub signature: String,
}

/// `auth.failed`: an agent was refused before a session opened. It is the only event of its
/// own one-event chain. Claims of a token that did not verify are reported as *claimed*: they
/// may be forged and never name an agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuthFailed {
    /// What the agent was told (without the `tollgate: ` prefix).
    pub reason: String,
    /// The SQLSTATE (or other protocol code) it was refused with.
    pub code: String,
    pub client_addr: String,
    pub client_tls: bool,
    pub client_user: String,
    /// The resource it asked for (which may not exist).
    pub requested_resource: String,
    /// Whether the token verified (a valid agent refused for another reason).
    pub verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_subject: Option<String>,
}

/// `policy.changed`: a new policy version, who made it and what changed. These events form one
/// chain of their own ([`crate::names::policy_chain`]); version N is seq N-1.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PolicyChanged {
    pub version: u64,
    pub document: crate::policy::PolicyDocument,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub changes: Vec<crate::policy::PolicyChange>,
}

/// `approval.requested`: a command is held until enough people approve it. Published by the
/// proxy holding it, in the session's chain, right after the held `command` event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApprovalRequested {
    pub approval_id: Uuid,
    pub command_id: Uuid,
    /// The approval rule that held it.
    pub rule: String,
    /// The statement, masked, as the `command` event recorded it.
    pub statement: String,
    pub classes: Vec<String>,
    pub relations: Vec<String>,
    /// Groups whose members may decide; approvals needed.
    pub approver_groups: Vec<String>,
    pub quorum: u32,
    #[serde(with = "crate::event::time::rfc3339_nanos")]
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// Asked ahead of a run: approving it lets matching commands run for this many minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_minutes: Option<u32>,
}

/// What a person decided.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    Deny,
}

/// Where a decision came from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Rest,
    Slack,
    Webhook,
    /// The control plane's web console (a person signed in with their identity provider).
    Console,
}

/// `approval.decided`: one person's decision on a request (quorum may need several). Published
/// by the control plane; the envelope's `agent` is the person, `resource` the request's. Each
/// decision is its own one-event chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApprovalDecided {
    pub approval_id: Uuid,
    pub verdict: Verdict,
    pub channel: Channel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Approve for this many minutes: later matching commands of the same agent on the same
    /// resource run without a new request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_minutes: Option<u32>,
}

/// `session.end_requested`: a person asked to end a live session. Published by the control
/// plane, signed; the envelope's `agent` is the person, `resource` the session's. The proxy
/// holding the session closes it and records `session.ended` with reason `ended_by_person`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionEndRequested {
    pub session_id: Uuid,
    pub channel: Channel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `approval.released`: a quorum approved a held command and the holding proxy runs it now.
/// Recorded (durably, in the session's chain) before the command is forwarded, so a held
/// command that ran is on record as released.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApprovalReleased {
    pub approval_id: Uuid,
    pub command_id: Uuid,
    /// The people whose approvals made the quorum (`issuer` and `subject`).
    pub approvers: Vec<String>,
}

/// Why a held command will not run although nobody denied it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExpiryReason {
    /// Nobody decided in time.
    Timeout,
    /// The agent left, or the proxy shut down, while the command was held.
    SessionEnded,
    /// The agent sent a cancel request (e.g. Ctrl-C in psql) while the command was held.
    Canceled,
}

/// `approval.expired`: the holding proxy gave up on a request; the command was refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApprovalExpired {
    pub approval_id: Uuid,
    pub reason: ExpiryReason,
}

/// `approval.refused`: an attempt to decide that was refused (bad signature, stale or replayed
/// callback, unknown person, not an approver, own request, a second decision...). Published by
/// the control plane as its own one-event chain; `agent` is the person when known.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApprovalRefused {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<Uuid>,
    pub channel: Channel,
    /// The HTTP status the caller got.
    pub status: u16,
    pub reason: String,
}

/// `node.started`: a proxy came up with this signing key. Its own one-event chain; the key
/// stays pending until an admin trusts it (or the control plane's configuration lists it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStarted {
    /// Public half of the key that signs the end of this node's sessions, hex.
    pub node_key: String,
    /// The proxy's version.
    pub version: String,
}

/// What an admin decided about a node key.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NodeTrust {
    /// Sessions it signs are trusted.
    Trusted,
    /// Rotated out: sessions it signed before are still trusted, later ones are not.
    Retired,
    /// Compromised: no session it signed is trusted.
    Revoked,
}

/// `node.decided`: an admin trusted, retired or revoked a node key. From the control plane, a
/// one-event chain whose `agent` is the admin.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeDecided {
    pub node_key: String,
    pub trust: NodeTrust,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
