//! The sftp subsystem (so `sftp`, and `scp`, which speaks sftp): the gateway reads the
//! protocol's packets both ways. Every operation that opens, changes or lists something
//! (open, remove, rename, mkdir, rmdir, setstat, symlink, opendir...) is a `command` event,
//! judged (read-only grants may only read; `deny_paths`; `deny_classes` sftp_read/sftp_write)
//! and recorded durably before the host sees it; a refused one is answered with
//! SSH_FX_PERMISSION_DENIED and never reaches the host. Reads and writes of an open file are
//! counted and recorded with its result when it is closed. What cannot be read as sftp ends
//! the channel. File contents are not masked.

use super::server::Opened;
use super::SshContext;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use russh::ChannelMsg;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tollgate_shared::event::{kind, Classification, Command, CommandResult, Decision, FileBytes, Outcome, Protocol};
use tollgate_shared::policy::Denial;
use uuid::Uuid;

/// OpenSSH's largest sftp packet is 256 KiB of data plus its header.
const MAX_PACKET: usize = 256 * 1024 + 1024;
/// The id of the gateway's own request for the session's directory (agents may not use it):
/// relative paths are judged and recorded as the absolute paths they name.
const HOME_REQUEST: u32 = u32::MAX;

mod fxp {
    pub const INIT: u8 = 1;
    pub const VERSION: u8 = 2;
    pub const OPEN: u8 = 3;
    pub const CLOSE: u8 = 4;
    pub const READ: u8 = 5;
    pub const WRITE: u8 = 6;
    pub const LSTAT: u8 = 7;
    pub const FSTAT: u8 = 8;
    pub const SETSTAT: u8 = 9;
    pub const FSETSTAT: u8 = 10;
    pub const OPENDIR: u8 = 11;
    pub const READDIR: u8 = 12;
    pub const REMOVE: u8 = 13;
    pub const MKDIR: u8 = 14;
    pub const RMDIR: u8 = 15;
    pub const REALPATH: u8 = 16;
    pub const STAT: u8 = 17;
    pub const RENAME: u8 = 18;
    pub const READLINK: u8 = 19;
    pub const SYMLINK: u8 = 20;
    pub const STATUS: u8 = 101;
    pub const HANDLE: u8 = 102;
    pub const DATA: u8 = 103;
    pub const NAME: u8 = 104;
    pub const EXTENDED: u8 = 200;
    /// SSH_FXP_OPEN flags that write.
    pub const WRITES: u32 = 0x02 | 0x04 | 0x08 | 0x10;
    pub const PERMISSION_DENIED: u32 = 3;
    pub const OP_UNSUPPORTED: u32 = 8;
}

/// Extended requests that only read (everything else is judged as a write).
const READING_EXTENSIONS: &[&str] = &[
    "statvfs@openssh.com",
    "fstatvfs@openssh.com",
    "limits@openssh.com",
    "expand-path@openssh.com",
    "home-directory",
    "users-groups-by-id@openssh.com",
];

/// A recorded operation waiting for the host's answer, or an open file.
struct Recorded {
    /// The (first) path it names.
    path: String,
    command_id: Uuid,
    command_seq: u64,
    started: Instant,
    read: u64,
    written: u64,
}

#[derive(Default)]
struct State {
    /// Request id → the recorded operation it is.
    pending: HashMap<u32, Recorded>,
    /// Open handle → its recorded open.
    handles: HashMap<Vec<u8>, Recorded>,
    /// READ request id → its handle, to count the DATA answering it.
    reads: HashMap<u32, Vec<u8>>,
    /// CLOSE request id → its handle.
    closes: HashMap<u32, Vec<u8>>,
}

/// One sftp packet from the agent, as judged.
enum Judged {
    /// Forward as it is (reads of data and metadata, counted where they belong).
    Pass,
    /// Record this operation, then forward (or refuse) it.
    Operation(Operation),
    /// Not sftp the gateway can read: the channel ends.
    Unreadable(String),
}

/// An operation to judge and record: `verb "path"... suffix`.
struct Operation {
    id: u32,
    verb: String,
    paths: Vec<String>,
    /// ` read`/` write` for an open.
    suffix: &'static str,
    writes: bool,
    /// It makes a link or moves something: a way around path rules.
    relinks: bool,
}

/// Extended requests whose paths the gateway knows: how many paths they begin with.
const PATH_EXTENSIONS: &[(&str, usize)] =
    &[("posix-rename@openssh.com", 2), ("hardlink@openssh.com", 2), ("lsetstat@openssh.com", 1)];

/// Refused operations after which a channel ends (the record is not a place to flood).
const MAX_REFUSALS: u32 = 100;

pub struct Sftp {
    ctx: Arc<SshContext>,
    opened: Arc<Opened>,
    state: Mutex<State>,
    /// The session's directory on the host, once it answered.
    home: tokio::sync::watch::Sender<Option<String>>,
}

impl Sftp {
    pub fn new(ctx: Arc<SshContext>, opened: Arc<Opened>) -> Self {
        Sftp { ctx, opened, state: Mutex::new(State::default()), home: tokio::sync::watch::channel(None).0 }
    }

    /// `path` as an absolute path (relative ones are the session directory's). Waits for the
    /// host to have said where that is.
    async fn absolute(&self, path: String) -> Result<String, String> {
        if path.starts_with('/') {
            return Ok(path);
        }
        let mut home = self.home.subscribe();
        let known = tokio::time::timeout(std::time::Duration::from_secs(10), home.wait_for(Option::is_some)).await;
        match known.ok().and_then(|h| h.ok()).and_then(|h| h.clone()) {
            Some(home) if home.is_empty() => Err("the host did not say where the session's directory is".into()),
            Some(home) if path.is_empty() || path == "." => Ok(home),
            Some(home) => Ok(format!("{}/{path}", home.trim_end_matches('/'))),
            None => Err("the host never said where the session's directory is".into()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Relay until either side closes.
    pub async fn relay(
        &self,
        from_agent: &mut russh::ChannelReadHalf,
        to_agent: &russh::ChannelWriteHalf<russh::server::Msg>,
        host: russh::Channel<russh::client::Msg>,
    ) {
        let (mut from_host, to_host) = host.split();
        let upload = async {
            let mut buffer = BytesMut::new();
            let mut refusals = 0u32;
            while let Some(message) = from_agent.wait().await {
                match message {
                    ChannelMsg::Data { data } => buffer.extend_from_slice(&data),
                    ChannelMsg::Eof => {
                        let _ = to_host.eof().await;
                        continue;
                    }
                    ChannelMsg::Close => break,
                    _ => continue,
                }
                loop {
                    let packet = match next_packet(&mut buffer) {
                        Ok(Some(packet)) => packet,
                        Ok(None) => break,
                        Err(why) => return tracing::info!(%why, "sftp from the agent cannot be read; channel ends"),
                    };
                    match self.judge_packet(&packet) {
                        Judged::Pass => {}
                        Judged::Unreadable(why) => {
                            return tracing::info!(%why, "sftp from the agent cannot be read; channel ends")
                        }
                        Judged::Operation(operation) => {
                            let id = operation.id;
                            match self.record(operation).await {
                                Ok(None) => {}
                                Ok(Some(refusal)) => {
                                    let _ = to_agent.data_bytes(status(id, fxp::PERMISSION_DENIED, &refusal)).await;
                                    refusals += 1;
                                    if refusals >= MAX_REFUSALS {
                                        return tracing::info!("too many refused sftp operations; channel ends");
                                    }
                                    continue;
                                }
                                Err(why) => {
                                    tracing::warn!(%why, "sftp operation not recorded; channel ends");
                                    let _ = to_agent.data_bytes(status(id, fxp::OP_UNSUPPORTED, &why)).await;
                                    return;
                                }
                            }
                        }
                    }
                    // Version 3 is the one read here (later versions lay OPEN out differently).
                    let init = packet.get(4) == Some(&fxp::INIT);
                    let packet = if init { init_v3() } else { packet };
                    if to_host.data_bytes(packet).await.is_err() {
                        return;
                    }
                    if init && to_host.data_bytes(realpath(HOME_REQUEST, ".")).await.is_err() {
                        return;
                    }
                }
            }
        };
        let download = async {
            let mut buffer = BytesMut::new();
            while let Some(message) = from_host.wait().await {
                match message {
                    ChannelMsg::Data { data } => buffer.extend_from_slice(&data),
                    ChannelMsg::ExtendedData { data, ext } => {
                        let _ = to_agent.extended_data_bytes(ext, data).await;
                        continue;
                    }
                    ChannelMsg::Eof | ChannelMsg::Close => break,
                    _ => continue,
                }
                loop {
                    let packet = match next_packet(&mut buffer) {
                        Ok(Some(packet)) => packet,
                        Ok(None) => break,
                        Err(why) => return tracing::warn!(%why, "sftp from the host cannot be read; channel ends"),
                    };
                    match self.answered(&packet) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(why) => return tracing::warn!(%why, "sftp from the host cannot be read; channel ends"),
                    }
                    if to_agent.data_bytes(packet).await.is_err() {
                        return;
                    }
                }
            }
        };
        tokio::pin!(upload, download);
        tokio::select! {
            () = &mut upload => { let _ = to_host.close().await; }
            () = &mut download => {}
        }
        self.finish();
    }

    /// What an agent's packet is.
    fn judge_packet(&self, packet: &[u8]) -> Judged {
        let mut p = Reader(&packet[4..]);
        let kind = p.u8();
        if kind == Some(fxp::INIT) {
            return Judged::Pass;
        }
        let Some((kind, id)) = kind.zip(p.u32()) else { return Judged::Unreadable("a packet without an id".into()) };
        if id == HOME_REQUEST {
            return Judged::Unreadable(format!("request id {id} is the gateway's"));
        }
        {
            // One request per id at a time: a reused id would pair answers with the wrong record.
            let state = self.state();
            if state.pending.contains_key(&id) || state.reads.contains_key(&id) || state.closes.contains_key(&id) {
                return Judged::Unreadable(format!("request id {id} is already waiting for an answer"));
            }
        }
        let op = |verb: &str, paths: Vec<String>, suffix: &'static str, writes: bool, relinks: bool| {
            Judged::Operation(Operation { id, verb: verb.to_owned(), paths, suffix, writes, relinks })
        };
        let path = |p: &mut Reader| p.string().map(|s| String::from_utf8_lossy(s).into_owned());
        match kind {
            fxp::OPEN => match (path(&mut p), p.u32()) {
                (Some(name), Some(flags)) => {
                    let writes = flags & fxp::WRITES != 0;
                    op("open", vec![name], if writes { " write" } else { " read" }, writes, false)
                }
                _ => Judged::Unreadable("an OPEN without its fields".into()),
            },
            fxp::READ => {
                if let Some(handle) = p.string() {
                    self.state().reads.insert(id, handle.to_vec());
                }
                Judged::Pass
            }
            fxp::WRITE => {
                if let (Some(handle), Some(_offset), Some(data)) = (p.string().map(<[u8]>::to_vec), p.u64(), p.string())
                {
                    if let Some(open) = self.state().handles.get_mut(&handle) {
                        open.written += data.len() as u64;
                    }
                }
                Judged::Pass
            }
            fxp::CLOSE => {
                if let Some(handle) = p.string() {
                    self.state().closes.insert(id, handle.to_vec());
                }
                Judged::Pass
            }
            fxp::LSTAT | fxp::FSTAT | fxp::READDIR | fxp::REALPATH | fxp::STAT | fxp::READLINK => Judged::Pass,
            fxp::OPENDIR => match path(&mut p) {
                Some(name) => op("opendir", vec![name], "", false, false),
                None => Judged::Unreadable("an OPENDIR without a path".into()),
            },
            fxp::REMOVE | fxp::MKDIR | fxp::RMDIR | fxp::SETSTAT => {
                let verb = match kind {
                    fxp::REMOVE => "remove",
                    fxp::MKDIR => "mkdir",
                    fxp::RMDIR => "rmdir",
                    _ => "setstat",
                };
                match path(&mut p) {
                    Some(name) => op(verb, vec![name], "", true, false),
                    None => Judged::Unreadable(format!("a {verb} without a path")),
                }
            }
            fxp::RENAME | fxp::SYMLINK => {
                let verb = if kind == fxp::RENAME { "rename" } else { "symlink" };
                match (path(&mut p), path(&mut p)) {
                    (Some(a), Some(b)) => op(verb, vec![a, b], "", true, true),
                    _ => Judged::Unreadable(format!("a {verb} without its paths")),
                }
            }
            fxp::FSETSTAT => {
                // Named by the file its handle opened.
                let opened = p.string().and_then(|h| self.state().handles.get(h).map(|r| r.path.clone()));
                op("fsetstat", opened.into_iter().collect(), "", true, false)
            }
            fxp::EXTENDED => {
                let Some(name) = p.string().map(|s| String::from_utf8_lossy(s).into_owned()) else {
                    return Judged::Unreadable("an EXTENDED without a name".into());
                };
                if READING_EXTENSIONS.contains(&name.as_str()) {
                    return Judged::Pass;
                }
                let count = PATH_EXTENSIONS.iter().find(|(n, _)| *n == name).map_or(0, |(_, count)| *count);
                let mut paths = Vec::new();
                for _ in 0..count {
                    match path(&mut p) {
                        Some(path) => paths.push(path),
                        None => return Judged::Unreadable(format!("{name} without its paths")),
                    }
                }
                op(&format!("extended {name}"), paths, "", true, count == 2)
            }
            other => Judged::Unreadable(format!("sftp request type {other}")),
        }
    }

    /// Judge and record an operation (durably, before the host sees it). `Some(reason)` when
    /// it is refused.
    async fn record(&self, operation: Operation) -> Result<Option<String>, String> {
        let Operation { id, verb, paths, suffix, writes, relinks } = operation;
        let opened = &self.opened;
        // Judged and recorded as absolute paths, quoted (a path may hold spaces).
        // (A symbolic link's target is kept as written: the host resolves it from the link's
        // directory, so a relative one cannot be placed, and path rules refuse it.)
        let mut absolute = Vec::with_capacity(paths.len());
        for path in paths {
            absolute.push(if verb == "symlink" { path } else { self.absolute(path).await? });
        }
        let paths = absolute;
        let quoted: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
        let statement = format!("{verb} {}{suffix}", quoted.join(" ")).trim_end().to_owned();
        opened.commands.fetch_add(1, Ordering::Relaxed);
        let policy = self.ctx.services.policy.borrow().clone();
        let resource = policy.as_ref().and_then(|p| p.document.resource(&opened.resource.name));
        let class = if writes { "sftp_write" } else { "sftp_read" };
        let classification =
            Classification { statements: 1, classes: [class.to_owned()].into(), writes, ..Default::default() };
        let denial = match (&policy, resource) {
            (None, _) => Some(Denial { rule: "no_policy".into(), reason: "no policy is loaded".into() }),
            (Some(_), None) => {
                Some(Denial { rule: "resource_not_in_policy".into(), reason: "the resource left the policy".into() })
            }
            (Some(_), Some(resource)) => {
                resource.deny_paths(&paths, relinks).or_else(|| resource.deny(opened.access, &classification))
            }
        };
        let mut tally = tollgate_shared::mask::Tally::default();
        let masker = crate::policy::masker(policy.as_deref(), &opened.resource.name);
        let record = Command {
            protocol: Protocol::Sftp,
            statement: masker.mask_str(&statement, None, &mut tally).into_owned(),
            postgres: None,
            classification: Some(classification),
            parse_error: None,
            decision: if denial.is_some() { Decision::Deny } else { Decision::Allow },
            rule: denial.as_ref().map(|d| d.rule.clone()),
            policy_version: policy.as_ref().map(|p| p.version),
            approval_id: None,
            masked: tally.into_counts(),
        };
        let event = opened.recorder.seal(kind::COMMAND, &record).map_err(|e| e.to_string())?;
        let (command_id, command_seq) = (event.id, event.seq);
        opened.recorder.durable(vec![event]).await.map_err(|e| e.to_string())?;
        if let Some(denial) = denial {
            return Ok(Some(format!(
                "tollgate: {statement} denied by rule {} on resource {}: {}",
                denial.rule, opened.resource.name, denial.reason
            )));
        }
        let path = paths.into_iter().next().unwrap_or_default();
        let recorded = Recorded { command_id, command_seq, started: Instant::now(), read: 0, written: 0, path };
        self.state().pending.insert(id, recorded);
        Ok(None)
    }

    /// A host's answer: a handle for an open, data for a read, the status of an operation.
    /// False for the answer to the gateway's own request (the agent never sees it).
    fn answered(&self, packet: &[u8]) -> Result<bool, String> {
        let mut p = Reader(&packet[4..]);
        let (Some(kind), Some(id)) = (p.u8(), p.u32()) else { return Ok(true) };
        if kind == fxp::VERSION {
            // (Its second field is the version.)
            return if id == 3 { Ok(true) } else { Err(format!("the host speaks sftp version {id}, not 3")) };
        }
        if id == HOME_REQUEST {
            let home = (kind == fxp::NAME && p.u32().is_some_and(|n| n >= 1))
                .then(|| p.string().map(|s| String::from_utf8_lossy(s).into_owned()))
                .flatten()
                .filter(|h| h.starts_with('/'));
            // Unknown stays unknown: relative paths are then refused, not guessed.
            self.home.send_replace(home.or(Some(String::new())));
            return Ok(false);
        }
        let mut state = self.state();
        match kind {
            fxp::HANDLE => {
                if let (Some(open), Some(handle)) = (state.pending.remove(&id), p.string()) {
                    state.handles.insert(handle.to_vec(), open);
                }
            }
            fxp::DATA => {
                if let (Some(handle), Some(data)) = (state.reads.remove(&id), p.string()) {
                    if let Some(open) = state.handles.get_mut(&handle) {
                        open.read += data.len() as u64;
                    }
                }
            }
            fxp::STATUS => {
                state.reads.remove(&id);
                let code = p.u32().unwrap_or(u32::MAX);
                let ended = match state.closes.remove(&id) {
                    Some(handle) => state.handles.remove(&handle),
                    None => state.pending.remove(&id),
                };
                drop(state);
                if let Some(done) = ended {
                    self.result(done, if code == 0 { Outcome::Ok } else { Outcome::Error });
                }
            }
            _ => {
                state.pending.remove(&id);
            }
        }
        Ok(true)
    }

    /// The channel ended: what is still open or unanswered ends unfinished.
    fn finish(&self) {
        let left: Vec<Recorded> = {
            let mut state = self.state();
            let state = &mut *state;
            state.pending.drain().map(|(_, r)| r).chain(state.handles.drain().map(|(_, r)| r)).collect()
        };
        for recorded in left {
            self.result(recorded, Outcome::Unfinished);
        }
    }

    fn result(&self, done: Recorded, outcome: Outcome) {
        let result = CommandResult {
            command_id: done.command_id,
            command_seq: done.command_seq,
            outcome,
            tags: Vec::new(),
            rows: 0,
            duration_us: done.started.elapsed().as_micros() as u64,
            error: None,
            masked: Vec::new(),
            nulled: 0,
            exec: None,
            forwarded: None,
            file: Some(FileBytes { read: done.read, written: done.written }),
        };
        match self.opened.recorder.seal(kind::COMMAND_RESULT, &result) {
            Ok(event) => self.opened.recorder.background(event),
            Err(e) => tracing::error!(error = %e, "cannot seal an sftp result"),
        }
    }
}

/// The next whole packet (with its length prefix), if the buffer holds one.
fn next_packet(buffer: &mut BytesMut) -> Result<Option<Bytes>, String> {
    if buffer.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]) as usize;
    if len == 0 || len > MAX_PACKET {
        return Err(format!("an sftp packet of {len} bytes"));
    }
    if buffer.len() < 4 + len {
        return Ok(None);
    }
    Ok(Some(buffer.split_to(4 + len).freeze()))
}

/// An SSH_FXP_INIT asking for version 3.
fn init_v3() -> Bytes {
    let mut packet = BytesMut::with_capacity(9);
    packet.put_u32(5);
    packet.put_u8(fxp::INIT);
    packet.put_u32(3);
    packet.freeze()
}

/// An SSH_FXP_REALPATH request.
fn realpath(id: u32, path: &str) -> Bytes {
    let mut packet = BytesMut::new();
    packet.put_u32((1 + 4 + 4 + path.len()) as u32);
    packet.put_u8(fxp::REALPATH);
    packet.put_u32(id);
    packet.put_u32(path.len() as u32);
    packet.put_slice(path.as_bytes());
    packet.freeze()
}

/// An SSH_FXP_STATUS answer.
fn status(id: u32, code: u32, message: &str) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u8(fxp::STATUS);
    body.put_u32(id);
    body.put_u32(code);
    body.put_u32(message.len() as u32);
    body.put_slice(message.as_bytes());
    body.put_u32(2);
    body.put_slice(b"en");
    let mut packet = BytesMut::with_capacity(body.len() + 4);
    packet.put_u32(body.len() as u32);
    packet.put_slice(&body);
    packet.freeze()
}

/// Reading the fields of a packet; `None` when it ends early.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        (self.0.remaining() >= 1).then(|| self.0.get_u8())
    }
    fn u32(&mut self) -> Option<u32> {
        (self.0.remaining() >= 4).then(|| self.0.get_u32())
    }
    fn u64(&mut self) -> Option<u64> {
        (self.0.remaining() >= 8).then(|| self.0.get_u64())
    }
    fn string(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        if self.0.len() < len {
            return None;
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(s)
    }
}
