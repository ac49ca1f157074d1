//! pgbouncer in session mode in front of a test PostgreSQL, for benchmarks that compare with it.

use super::PgServer;
use std::process::{Child, Command, Stdio};

pub struct PgBouncer {
    pub port: u16,
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
                return PgBouncer { port, _dir: dir, child };
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
