//! An ephemeral PostgreSQL cluster: initdb + pg_ctl from the system's
//! binaries, on a free loopback port, removed when dropped.
//!
//! The demo and the tests use it so nothing needs a running server. Postgres
//! refuses to run as root, so when floe runs as root the cluster is created
//! and started as the `postgres` system user (uid/gid switched on the child
//! process; no sudo needed).

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::PipelineError;

/// How to install what is missing, said in every "not found" message.
const INSTALL_HINT: &str =
    "install PostgreSQL and PostGIS, e.g. `apt-get install postgresql-15 postgresql-15-postgis-3`, or set FLOE_PG_BIN to the directory holding initdb and pg_ctl";

/// A running throwaway cluster. Stopped and deleted on drop unless [`kept`](Self::keep).
#[derive(Debug)]
pub struct EphemeralCluster {
    bin: PathBuf,
    dir: Option<tempfile::TempDir>,
    data: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    stopped: bool,
}

fn err(msg: impl Into<String>) -> PipelineError {
    PipelineError::Cluster(msg.into())
}

/// Finds the directory with initdb and pg_ctl: FLOE_PG_BIN, `pg_config
/// --bindir`, the newest /usr/lib/postgresql/*/bin, then PATH.
pub fn find_bin_dir() -> Result<PathBuf, PipelineError> {
    let has_tools = |d: &Path| d.join("initdb").exists() && d.join("pg_ctl").exists();
    if let Ok(d) = std::env::var("FLOE_PG_BIN") {
        let d = PathBuf::from(d);
        return if has_tools(&d) {
            Ok(d)
        } else {
            Err(err(format!(
                "FLOE_PG_BIN={} has no initdb/pg_ctl",
                d.display()
            )))
        };
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_tools(&d) {
            return Ok(d);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_tools(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Ok(path) = std::env::var("PATH") {
        if let Some(d) = std::env::split_paths(&path).find(|d| has_tools(d)) {
            return Ok(d);
        }
    }
    Err(err(format!("initdb and pg_ctl not found; {INSTALL_HINT}")))
}

/// The `postgres` user's uid and gid, from /etc/passwd.
fn postgres_user() -> Result<(u32, u32), PipelineError> {
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| err(format!("cannot read /etc/passwd: {e}")))?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .ok_or_else(|| err("running as root, but there is no `postgres` system user to run the cluster as (Postgres refuses to run as root)"))
}

/// True when this process runs as root (`/proc/self` is owned by our uid).
fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A free TCP port on loopback.
pub fn free_port() -> Result<u16, PipelineError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| err(format!("no free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| err(format!("no free port: {e}")))
}

impl EphemeralCluster {
    /// initdb + start on a free port, with settings for a disposable cluster
    /// (no fsync: its data dies with it). Checks that PostGIS is installed.
    pub fn start() -> Result<Self, PipelineError> {
        let bin = find_bin_dir()?;
        check_postgis(&bin)?;
        let run_as = if is_root() {
            Some(postgres_user()?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("floe-pg-")
            .tempdir()
            .map_err(|e| err(format!("cannot create a temporary directory: {e}")))?;
        let data = dir.path().join("data");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(|e| {
                err(format!(
                    "cannot hand {} to the postgres user: {e}",
                    dir.path().display()
                ))
            })?;
        }
        let mut cluster = EphemeralCluster {
            bin,
            dir: Some(dir),
            data,
            port: 0,
            run_as,
            stopped: true,
        };
        let data = cluster.data.to_string_lossy().to_string();
        cluster.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
        )?;
        // A port can be taken between probing and binding; try a few.
        let mut last = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            match cluster.pg_ctl_start() {
                Ok(()) => {
                    cluster.stopped = false;
                    return Ok(cluster);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| err("could not start")))
    }

    fn pg_ctl_start(&self) -> Result<(), PipelineError> {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=100 \
             -c shared_buffers=256MB -c max_wal_size=4GB",
            self.port
        );
        let data = self.data.to_string_lossy().to_string();
        let log = self.log_path().to_string_lossy().to_string();
        self.run(
            "pg_ctl",
            &[
                "start", "-D", &data, "-l", &log, "-w", "-t", "60", "-o", &opts,
            ],
        )
        .map(|_| ())
        .map_err(|e| err(format!("{e}; server log: {}", self.log_tail())))
    }

    fn log_path(&self) -> PathBuf {
        self.data
            .parent()
            .unwrap_or(Path::new("/tmp"))
            .join("postgres.log")
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<Output, PipelineError> {
        let mut cmd = Command::new(self.bin.join(tool));
        cmd.args(args).env("LC_ALL", "C");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid).current_dir("/");
        }
        let out = cmd
            .output()
            .map_err(|e| err(format!("cannot run {tool}: {e}; {INSTALL_HINT}")))?;
        if !out.status.success() {
            return Err(err(format!(
                "{tool} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(out)
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for the `postgres` superuser and database.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// A URL for another database on this cluster.
    pub fn url_for(&self, dbname: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{dbname}", self.port)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Makes sure the cluster goes away when this process does, however it
    /// ends (panic, SIGKILL, a `static` that is never dropped): a small shell
    /// watchdog waits for our pid to vanish, then stops the postmaster and
    /// deletes the files.
    pub fn stop_when_process_exits(&self) -> Result<(), PipelineError> {
        let Some(dir) = self.dir.as_ref().map(|d| d.path().to_path_buf()) else {
            return Ok(());
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             pm=$(head -1 '{data}/postmaster.pid' 2>/dev/null) && kill -INT \"$pm\" 2>/dev/null; \
             for i in $(seq 1 100); do kill -0 \"$pm\" 2>/dev/null || break; sleep 0.1; done; \
             rm -rf '{dir}'",
            pid = std::process::id(),
            data = self.data.display(),
            dir = dir.display(),
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map(|_| ())
            .map_err(|e| err(format!("cannot start the cleanup watchdog: {e}")))
    }

    /// Leaves the cluster running and its files in place after this value is dropped.
    pub fn keep(mut self) -> (u16, PathBuf) {
        self.stopped = true;
        let dir = self.dir.take().map(|d| d.keep()).unwrap_or_default();
        (self.port, dir)
    }

    /// Stops the server (fast: sessions are disconnected) and starts it again
    /// on the same port: what a failover or a restart does to clients.
    pub fn restart(&mut self) -> Result<(), PipelineError> {
        let data = self.data.to_string_lossy().to_string();
        self.run(
            "pg_ctl",
            &["stop", "-D", &data, "-m", "fast", "-w", "-t", "30"],
        )?;
        self.pg_ctl_start()
    }

    /// Starts a server [`EphemeralCluster::stop`]ped before, on the same
    /// port and data: what an outage that ends looks like to clients.
    pub fn start_again(&mut self) -> Result<(), PipelineError> {
        self.stopped = false;
        self.pg_ctl_start()
    }

    /// Stops the server now.
    pub fn stop(&mut self) -> Result<(), PipelineError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let data = self.data.to_string_lossy().to_string();
        self.run(
            "pg_ctl",
            &["stop", "-D", &data, "-m", "fast", "-w", "-t", "30"],
        )
        .map(|_| ())
    }
}

impl Drop for EphemeralCluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!("stopping ephemeral Postgres: {e}");
        }
    }
}

/// PostGIS is an extension of the server: look for its control file.
fn check_postgis(bin: &Path) -> Result<(), PipelineError> {
    let share = Command::new(bin.join("pg_config"))
        .arg("--sharedir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let candidates: Vec<PathBuf> = share
        .into_iter()
        .chain(
            bin.parent()
                .and_then(|v| v.file_name())
                .map(|v| PathBuf::from("/usr/share/postgresql").join(v)),
        )
        .collect();
    if candidates
        .iter()
        .any(|s| s.join("extension/postgis.control").exists())
    {
        return Ok(());
    }
    Err(err(format!(
        "PostGIS is not installed for the PostgreSQL in {} (looked in {}); {INSTALL_HINT}",
        bin.display(),
        candidates
            .iter()
            .map(|c| c.join("extension").display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}
