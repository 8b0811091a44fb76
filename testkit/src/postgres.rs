//! A private PostgreSQL for tests (Debian's postgresql 15): `initdb` and
//! `postgres` run as the `postgres` user (`runuser -u postgres --`; it
//! refuses to run as root) on a data dir in a temp dir that it owns, with
//! `-k DIR` (its socket beside the data), `listen_addresses=127.0.0.1`,
//! `fsync=off` (tests only) and trust authentication, on a free loopback
//! port; ready when `pg_isready` says so. Stopped on drop by the PID in
//! `DIR/postmaster.pid` (SIGTERM, then SIGKILL), then the `runuser` child
//! is reaped. `PG_BIN_DIR` selects another directory of binaries.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::free_port;
use crate::process;

/// The directory of the server binaries.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("PG_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// A running PostgreSQL.
pub struct Postgres {
    port: u16,
    data: PathBuf,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

fn as_postgres(bin: &str) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(bin_dir().join(bin));
    cmd
}

fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Postgres {
    /// Starts a server (panics with its log when it does not start).
    pub fn new() -> Postgres {
        Self::try_new().unwrap_or_else(|e| panic!("postgres did not start: {e}"))
    }

    /// Like [`Postgres::new`], as a `Result`.
    pub fn try_new() -> Result<Postgres, String> {
        if !bin_dir().join("initdb").exists() {
            return Err(format!(
                "{} has no initdb: apt-get install -y postgresql (or set PG_BIN_DIR)",
                bin_dir().display()
            ));
        }
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        // The postgres user must reach its data dir inside our temp dir.
        run(
            {
                let mut c = Command::new("chmod");
                c.arg("0755").arg(dir.path());
                c
            },
            "chmod",
        )?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data).map_err(|e| e.to_string())?;
        run(
            {
                let mut c = Command::new("chown");
                c.arg("postgres:postgres").arg(&data);
                c
            },
            "chown",
        )?;
        let mut initdb = as_postgres("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"]);
        run(initdb, "initdb")?;
        let port = free_port();
        let log = dir.path().join("postgres.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = as_postgres("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .arg("-k")
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .map_err(|e| format!("spawning postgres: {e}"))?;
        let mut pg = Postgres {
            port,
            data,
            child: Some(child),
            dir,
        };
        let ready = {
            let child = pg.child.as_mut().expect("just spawned");
            process::wait_ready(child, "postgres", Duration::from_secs(30), || {
                Command::new(bin_dir().join("pg_isready"))
                    .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                    .status()
                    .is_ok_and(|s| s.success())
            })
        };
        if let Err(e) = ready {
            pg.stop();
            return Err(format!("{e}:\n{}", process::tail(&log, 30)));
        }
        Ok(pg)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` (`createdb`) and returns its URL.
    pub fn createdb(&self, name: &str) -> String {
        let mut cmd = Command::new(bin_dir().join("createdb"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", name]);
        run(cmd, "createdb").unwrap_or_else(|e| panic!("{e}"));
        self.url(name)
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// The postmaster's PID (first line of `postmaster.pid`).
    pub fn postmaster_pid(&self) -> Option<u32> {
        postmaster_pid(&self.data)
    }

    /// Stops the postmaster (SIGTERM, SIGKILL after 5 s) and reaps
    /// `runuser`.
    pub fn stop(&mut self) {
        if let Some(pid) = self.postmaster_pid() {
            process::signal(pid, "TERM");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                if let Some(c) = self.child.as_mut() {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if Path::new(&format!("/proc/{pid}")).exists() && self.child.is_some() {
                process::signal(pid, "KILL");
            }
        }
        process::terminate(&mut self.child, Duration::from_secs(2));
    }
}

fn postmaster_pid(data: &Path) -> Option<u32> {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

impl Default for Postgres {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
