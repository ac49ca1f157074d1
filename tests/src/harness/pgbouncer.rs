//! pgbouncer in session mode in front of a test PostgreSQL, for benchmarks that compare with it.

use super::PgServer;
use std::process::{Child, Command, Stdio};

pub struct PgBouncer {
    pub port: u16,
    /// Its configuration file (names its process on the command line).
    pub ini: std::path::PathBuf,
    _dir: tempfile::TempDir,
    child: Child,
}

impl PgBouncer {
    /// Serve `database` as `user`/`password` (clients log in with the same credentials).
    pub fn start(pg: &PgServer, database: &str, user: &str, password: &str) -> PgBouncer {
        let dir = tempfile::Builder::new().prefix("tollgate-pgbouncer").tempdir().expect("dir");
        let port = super::free_port();
        let path = dir.path().display().to_string();
        std::fs::write(dir.path().join("userlist.txt"), format!("\"{user}\" \"{password}\"\n")).expect("userlist");
        std::fs::write(
            dir.path().join("pgbouncer.ini"),
            format!(
                "[databases]\n{database} = host=127.0.0.1 port={pg_port} dbname={database}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir = {path}\n\
                 auth_type = scram-sha-256\nauth_file = {path}/userlist.txt\npool_mode = session\n\
                 max_client_conn = 200\ndefault_pool_size = 20\nlogfile = {path}/pgbouncer.log\n",
                pg_port = pg.port
            ),
        )
        .expect("ini");
        let program = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("pgbouncer");
        // pgbouncer refuses to run as root.
        let mut command = if super::postgres::is_root() {
            let status =
                Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().expect("chown");
            assert!(status.success());
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", program]);
            c
        } else {
            Command::new(program)
        };
        let mut child = command
            .arg(dir.path().join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pgbouncer starts");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return PgBouncer { port, ini: dir.path().join("pgbouncer.ini"), _dir: dir, child };
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("pgbouncer did not start on port {port}");
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run pgbench (`clients` clients, `-j` up to 2, for `seconds`) with `args` (workload and
/// connection); returns (TPS, average latency in ms).
/// `pgbench -i` at `scale` into `database`, as `user` (the tables every pgbench benchmark reads).
pub fn pgbench_init(pg: &PgServer, user: &str, password: &str, database: &str, scale: u32) {
    let init = Command::new(pg.bin("pgbench"))
        .args(["-i", "-q", "-s", &scale.to_string(), &pg.url(user, password, database)])
        .output()
        .expect("pgbench -i");
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
}

pub fn pgbench(pg: &super::PgServer, args: &[String], password: &str, clients: u32, seconds: u32) -> (f64, f64) {
    let out = std::process::Command::new(pg.bin("pgbench"))
        .args(["-n", "-c", &clients.to_string(), "-j", &clients.min(2).to_string(), "-T", &seconds.to_string()])
        .args(args)
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", "disable")
        .output()
        .expect("pgbench runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "pgbench {args:?} failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    let number_after = |label: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(label))
            .and_then(|l| l[label.len()..].split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no `{label}` in pgbench output:\n{text}"))
    };
    (number_after("tps = "), number_after("latency average = "))
}
