//! A real OpenSSH host for the tests: sshd on a free loopback port with a host key of its own,
//! logging in the user running the tests, with one authorized key (the gateway's) bound to a
//! forced command that appends every command line it is asked to run to the host's command
//! log before running it: the SSH counterpart of PostgreSQL's statement log, checked against
//! the record. And the real `ssh` client for agents, its token given as the password.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The host's sftp server (openssh-sftp-server, which openssh-server depends on).
const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

pub struct SshHost {
    pub port: u16,
    /// The login on the host (the user running the tests).
    pub user: String,
    /// The host's public key, as a known_hosts entry without host names.
    pub host_key: String,
    /// The private key only the gateway holds.
    pub gateway_key: PathBuf,
    /// When the host trusts a user CA instead of the gateway's key: that CA's private key
    /// (the gateway holds it).
    pub ca_key: Option<PathBuf>,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Drop for SshHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An ed25519 key pair at `path` and `path.pub`, without a passphrase.
pub fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "tollgate-test", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen runs");
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
}

impl SshHost {
    pub fn start() -> SshHost {
        Self::start_with(false)
    }

    /// A host that trusts a user CA (`cert-authority` in authorized_keys, with the same forced
    /// command) instead of one key: the gateway logs in with certificates it signs.
    pub fn start_trusting_ca() -> SshHost {
        Self::start_with(true)
    }

    fn start_with(trust_ca: bool) -> SshHost {
        let dir = tempfile::tempdir().expect("ssh host dir");
        let d = dir.path();
        keygen(&d.join("host_ed25519"));
        keygen(&d.join("gateway_ed25519"));
        let work = d.join("work");
        std::fs::create_dir(&work).expect("work dir");
        let script = d.join("run-logged.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncd {work}\n# A shell: bash, appending every line it reads to the shell history at each prompt and at its exit.\nif [ -z \"$SSH_ORIGINAL_COMMAND\" ]; then\n  exec env PS1='$ ' PROMPT_COMMAND='history -a' HISTFILE={history} HISTCONTROL= HISTSIZE=10000 bash --norc --noprofile -O histappend -i\nfi\n# The sftp subsystem logs each file operation itself.\nif [ \"$SSH_ORIGINAL_COMMAND\" = {sftp_server} ]; then\n  exec {sftp_server} -e -l INFO -d {work} 2>>{sftp_log}\nfi\n# The host's command log: one base64 line per command line, written before it runs.\nprintf '%s' \"$SSH_ORIGINAL_COMMAND\" | base64 -w0 >> {log}\necho >> {log}\nexec /bin/sh -c \"$SSH_ORIGINAL_COMMAND\"\n",
                log = d.join("commands.log").display(),
                history = d.join("shell_history").display(),
                sftp_log = d.join("sftp.log").display(),
                sftp_server = SFTP_SERVER,
                work = work.display()
            ),
        )
        .expect("forced command");
        set_mode(&script, 0o755);
        let ca_key = trust_ca.then(|| {
            keygen(&d.join("user_ca"));
            d.join("user_ca")
        });
        let trusted = match &ca_key {
            Some(ca) => format!(
                "cert-authority,{}",
                std::fs::read_to_string(ca.with_extension("pub")).expect("CA public key").trim()
            ),
            None => {
                std::fs::read_to_string(d.join("gateway_ed25519.pub")).expect("gateway public key").trim().to_owned()
            }
        };
        let (options, key) =
            trusted.split_once("ssh-ed25519").map(|(o, k)| (o, format!("ssh-ed25519{k}"))).expect("a key");
        std::fs::write(
            d.join("authorized_keys"),
            format!("{options}command=\"{}\",no-agent-forwarding,no-X11-forwarding {key}", script.display()),
        )
        .expect("authorized_keys");
        set_mode(&d.join("authorized_keys"), 0o600);
        let port = super::free_port();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\nPubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nLogLevel VERBOSE\nMaxStartups 500\nSubsystem sftp {SFTP_SERVER}\n",
                d = d.display()
            ),
        )
        .expect("sshd_config");
        // sshd's privilege separation directory (the service's unit makes it; no service runs here).
        let _ = std::fs::create_dir_all("/run/sshd");
        let log = std::fs::File::create(d.join("sshd.log")).expect("sshd log");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sshd starts (openssh-server, installed by scripts/install-deps.sh)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let log = std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default();
            assert!(std::time::Instant::now() < deadline, "sshd did not start: {log}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let host_key = std::fs::read_to_string(d.join("host_ed25519.pub")).expect("host public key");
        let user =
            String::from_utf8_lossy(&Command::new("id").arg("-un").output().expect("id").stdout).trim().to_owned();
        SshHost {
            port,
            user,
            host_key: host_key.trim().to_owned(),
            gateway_key: d.join("gateway_ed25519"),
            ca_key,
            dir,
            child,
        }
    }

    /// Every command line the host was asked to run, in order. Each is logged before it runs,
    /// so a command whose exec has finished is here. A log line that cannot be read fails.
    pub fn commands(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.path().join("commands.log")).unwrap_or_default();
        log.lines()
            .map(|line| {
                let out = Command::new("base64").arg("-d").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn();
                let mut child = out.expect("base64 runs");
                use std::io::Write;
                child.stdin.take().expect("stdin").write_all(line.as_bytes()).expect("write");
                let out = child.wait_with_output().expect("base64 -d");
                assert!(out.status.success(), "unreadable command log line {line:?}");
                String::from_utf8(out.stdout).expect("a command line is UTF-8")
            })
            .collect()
    }

    /// The host's command log against the record: the host ran exactly the exec commands the
    /// record shows as allowed (or held, then released), in order, and nothing else. Returns
    /// how many it ran.
    pub fn check_against(&self, events: &[serde_json::Value]) -> Result<usize, String> {
        let released: std::collections::HashSet<&str> = events
            .iter()
            .filter(|e| e["type"] == "approval.released")
            .filter_map(|e| e["payload"]["command_id"].as_str())
            .collect();
        let allowed: Vec<&str> = events
            .iter()
            .filter(|e| e["type"] == "command" && e["payload"]["protocol"] == "exec")
            .filter(|e| {
                let decision = e["payload"]["decision"].as_str();
                decision == Some("allow")
                    || (decision == Some("hold") && e["id"].as_str().is_some_and(|id| released.contains(id)))
            })
            .filter_map(|e| e["payload"]["statement"].as_str())
            .collect();
        let ran = self.commands();
        if ran != allowed {
            return Err(format!("the host ran {ran:?}; the record allowed {allowed:?}"));
        }
        Ok(ran.len())
    }

    /// Every line the host's shells read, in order (bash's history, written at each prompt
    /// and when the shell exits).
    pub fn shell_lines(&self) -> Vec<String> {
        let history = std::fs::read_to_string(self.dir.path().join("shell_history")).unwrap_or_default();
        history.lines().map(str::to_owned).collect()
    }

    /// The file operations the host's sftp server logged (`open "/path" flags ...`,
    /// `remove name "/path"`...), one per line.
    pub fn file_operations(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.path().join("sftp.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| l.split_once("]: ").map(|(_, op)| op.to_owned()).or(Some(l.to_owned())))
            .filter(|op| ["open ", "remove ", "rename ", "mkdir ", "rmdir ", "set "].iter().any(|p| op.starts_with(p)))
            .collect()
    }

    /// A path in the directory commands run in.
    pub fn work(&self, name: &str) -> PathBuf {
        self.dir.path().join("work").join(name)
    }

    /// The host's sshd log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// An agent's `ssh`: `user@gateway`, the token as the password (through SSH_ASKPASS, as a
/// pipeline would), no key, no tty. Returns what the agent saw.
pub fn agent_ssh(gateway: SocketAddr, user: &str, token: &str, command: &str, stdin: Option<&[u8]>) -> Output {
    let mut child = agent_ssh_command(gateway, user, token, command)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh runs");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input).expect("write stdin");
    }
    child.wait_with_output().expect("ssh ends")
}

/// The `ssh` command of `agent_ssh`, to spawn and wait on.
pub fn agent_ssh_command(gateway: SocketAddr, user: &str, token: &str, command: &str) -> Command {
    agent_ssh_with(gateway, user, token, &[], Some(command))
}

/// `scp` as an agent runs it (over sftp, OpenSSH's default), the token as the password.
pub fn agent_scp(gateway: SocketAddr, token: &str, from: &str, to: &str) -> Output {
    let mut c = Command::new("scp");
    askpass(&mut c, token)
        .args(["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no", "-o", "LogLevel=ERROR"])
        .arg("-P")
        .arg(gateway.port().to_string())
        .args([from, to])
        .stdin(Stdio::null())
        .output()
        .expect("scp runs")
}

/// The token as the password, through SSH_ASKPASS as a pipeline would give it.
fn askpass<'c>(c: &'c mut Command, token: &str) -> &'c mut Command {
    static ASKPASS: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = ASKPASS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("askpass dir");
        let script = dir.path().join("askpass.sh");
        std::fs::write(&script, "#!/bin/sh\nprintf '%s\\n' \"$TOLLGATE_TEST_TOKEN\"\n").expect("askpass");
        set_mode(&script, 0o755);
        dir
    });
    c.env("SSH_ASKPASS", dir.path().join("askpass.sh"))
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("TOLLGATE_TEST_TOKEN", token)
}

/// `ssh` as an agent runs it, with extra `options` before the destination, and a command or
/// none (`-N`).
pub fn agent_ssh_with(
    gateway: SocketAddr,
    user: &str,
    token: &str,
    options: &[&str],
    command: Option<&str>,
) -> Command {
    let mut c = Command::new("ssh");
    // ssh takes the first value it is given for an option: the caller's come first. No
    // terminal unless the caller asks for one (`-tt`).
    let tty = if options.iter().any(|o| o.starts_with("-t")) { None } else { Some("-T") };
    askpass(&mut c, token)
        .args(options)
        .args(tty)
        .args(["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no", "-o", "LogLevel=ERROR"])
        .args(["-o", "NumberOfPasswordPrompts=1", "-o", "ConnectTimeout=20"])
        .arg("-p")
        .arg(gateway.port().to_string())
        .arg(format!("{user}@{}", gateway.ip()));
    c.args(command);
    c
}
