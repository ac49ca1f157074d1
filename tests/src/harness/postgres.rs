//! A PostgreSQL cluster of its own: initdb with scram-sha-256 in a temp dir, every statement and
//! connection logged, so tests can prove what did (and did not) run upstream.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct PgServer {
    pub port: u16,
    pub superuser_password: String,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

/// The newest installed PostgreSQL's bin directory (or `TOLLGATE_PG_BIN`).
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TOLLGATE_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)")
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versions.sort();
    versions.pop().expect("an installed PostgreSQL version").1
}

pub(crate) fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// initdb and postgres refuse to run as root; run them as `postgres` then.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut command: Command, what: &str) -> Output {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl PgServer {
    pub async fn start() -> PgServer {
        let dir = tempfile::Builder::new().prefix("tollgate-pg").tempdir().expect("temp dir");
        let root = is_root();
        if root {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:postgres").arg(dir.path());
                    c
                },
                "chown",
            );
        }
        let password = format!("su-{}", uuid::Uuid::new_v4().simple());
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &password).expect("pwfile");
        if root {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:postgres").arg(&pwfile);
                    c
                },
                "chown",
            );
        }
        let bin = bin_dir();
        let data = dir.path().join("data");
        let mut initdb = as_server_user(&bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C"])
            .arg(format!("--pwfile={}", pwfile.display()));
        run(initdb, "initdb");
        let port = super::free_port();
        // Every statement is logged, as text (for greps) and as JSON (for the statement log
        // checked against the record: a statement text may hold newlines, JSON keeps it whole).
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={dir} -c log_statement=all -c log_connections=on -c fsync=off -c max_connections=200 -c log_line_prefix='%m [%p] db=%d ' -c logging_collector=on -c log_destination=stderr,jsonlog -c log_directory={dir}/log -c log_filename=server.log -c log_rotation_size=0 -c log_rotation_age=0",
            dir = dir.path().display()
        );
        let mut start = as_server_user(&bin.join("pg_ctl"));
        start
            .arg("-D")
            .arg(&data)
            .args(["-w", "-t", "60", "-o", &options, "-l"])
            .arg(dir.path().join("server.log"))
            .arg("start");
        run(start, "pg_ctl start");
        let server = PgServer { port, superuser_password: password, dir, bin };
        // The superuser's statements (the harness's setup, the control plane's projections,
        // whose parameters are whole events) are no agent's: the statement-log check leaves
        // them out, so logging them would only load the machine the benchmarks measure.
        server.admin_sql("postgres", "ALTER ROLE postgres SET log_statement = 'none'");
        server
    }

    /// A URL for `user`/`password` on `database`.
    pub fn url(&self, user: &str, password: &str, database: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{database}", self.port)
    }

    pub fn superuser_url(&self, database: &str) -> String {
        self.url("postgres", &self.superuser_password, database)
    }

    /// Run SQL as the superuser with psql, directly (not through the proxy).
    pub fn admin_sql(&self, database: &str, sql: &str) -> String {
        let mut c = Command::new(self.bin.join("psql"));
        c.args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-d"]).arg(self.superuser_url(database)).args(["-c", sql]);
        String::from_utf8_lossy(&run(c, "psql (admin)").stdout).into_owned()
    }

    /// The postmaster's process id (benchmarks read the CPU time of it and its children).
    pub fn postmaster_pid(&self) -> Option<u32> {
        let file = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid")).ok()?;
        file.lines().next()?.trim().parse().ok()
    }

    /// The server's log: every statement it ran and every connection it accepted, up to now
    /// (see `settle`).
    pub fn server_log(&self) -> String {
        self.settle();
        std::fs::read_to_string(self.dir.path().join("log/server.log")).unwrap_or_default()
    }

    /// The server's log as JSON records, one per line (`jsonlog`), up to now (see `settle`).
    pub fn json_log(&self) -> std::io::Result<String> {
        self.settle();
        std::fs::read_to_string(self.dir.path().join("log/server.json"))
    }

    /// Wait until the log files hold every line logged before this call. Backends hand their
    /// lines to the logging collector through a pipe and the collector writes them when it
    /// gets to them, so a statement that has completed may not be in the file yet. A marker
    /// statement logged now lands behind every earlier line: once both files show it, they
    /// hold everything before it. A log that never shows the marker fails the test (the
    /// evidence could not be read).
    fn settle(&self) {
        let marker = format!("log settled {}", uuid::Uuid::new_v4().simple());
        let mut c = Command::new(self.bin.join("psql"));
        c.args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-d"]).arg(self.superuser_url("postgres")).args([
            "-c",
            "SET log_statement = 'all'",
            "-c",
            &format!("SELECT '{marker}'"),
        ]);
        run(c, "psql (log marker)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let holds = |file: &str| {
            std::fs::read_to_string(self.dir.path().join("log").join(file)).is_ok_and(|log| log.contains(&marker))
        };
        while !(holds("server.log") && holds("server.json")) {
            assert!(std::time::Instant::now() < deadline, "the upstream's log never showed {marker}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// The log lines of sessions on `database` only (not the control plane's projections).
    pub fn database_log(&self, database: &str) -> String {
        let tag = format!(" db={database} ");
        self.server_log().lines().filter(|l| l.contains(&tag)).collect::<Vec<_>>().join("\n")
    }

    /// Replace pg_hba.conf and reload.
    pub fn set_hba(&self, lines: &str) {
        std::fs::write(self.dir.path().join("data/pg_hba.conf"), lines).expect("write pg_hba.conf");
        self.reload();
    }

    /// Serve TLS with this certificate and key (PEM), then reload.
    pub fn enable_ssl(&self, cert: &Path, key: &Path) {
        let data = self.dir.path().join("data");
        std::fs::copy(cert, data.join("server.crt")).expect("copy cert");
        std::fs::copy(key, data.join("server.key")).expect("copy key");
        if is_root() {
            let mut c = Command::new("chown");
            c.arg("postgres:postgres").arg(data.join("server.crt")).arg(data.join("server.key"));
            run(c, "chown");
        }
        let mut c = Command::new("chmod");
        c.arg("600").arg(data.join("server.key"));
        run(c, "chmod");
        self.admin_sql("postgres", "ALTER SYSTEM SET ssl = on");
        self.reload();
    }

    fn reload(&self) {
        let mut c = as_server_user(&self.bin.join("pg_ctl"));
        c.arg("-D").arg(self.dir.path().join("data")).arg("reload");
        run(c, "pg_ctl reload");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }

    pub fn bin(&self, tool: &str) -> PathBuf {
        self.bin.join(tool)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let mut stop = as_server_user(&self.bin.join("pg_ctl"));
        stop.arg("-D").arg(self.dir.path().join("data")).args(["-m", "immediate", "stop"]);
        let _ = stop.output();
    }
}
