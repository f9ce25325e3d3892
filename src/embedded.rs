//! The private PostgreSQL cluster: what `postgame serve` uses when the database URL is the
//! default and nothing answers there (or with `--embedded`), made from the machine's
//! PostgreSQL installation.
//!
//! Invariants:
//! - the data lives in one folder the user can see and delete (`--data-dir`), created by
//!   `initdb` on first use and reused after;
//! - the server listens on no TCP port, only on a Unix socket inside that folder, with
//!   trust authentication (the folder is readable by its owner only);
//! - a cluster this process started is stopped when it exits ([`Cluster::stop`], or
//!   `Drop` on an error path); one that was already running is left running;
//! - run as root, `initdb`, `pg_ctl` and `postgres` run as the `postgres` system user (as
//!   Debian's own tools do), which then owns the folder.

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{bail, Context};

/// Programs are built as `std` commands (so `Drop` can run one) and run with tokio's.
type StdCommand = std::process::Command;

/// Runs `cmd` to completion without blocking the runtime.
async fn run(cmd: StdCommand) -> std::io::Result<Output> {
    tokio::process::Command::from(cmd).output().await
}

/// The port in the socket's file name (`.s.PGSQL.<port>`); no TCP port is opened.
pub const SOCKET_PORT: u16 = 5432;
/// Longest Unix socket path (Linux's `sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// The system user the cluster runs as when postgame runs as root.
const SYSTEM_USER: &str = "postgres";
/// Seconds `pg_ctl` waits for the server to start or stop.
const PG_CTL_WAIT_SECONDS: &str = "60";

/// Finds a folder with `initdb`, `pg_ctl` and `postgres`: `explicit` when given, else
/// `pg_config --bindir`, Debian's `/usr/lib/postgresql/<newest>/bin`, RHEL's
/// `/usr/pgsql-<newest>/bin`, Homebrew's, then PATH.
pub fn find_installation(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = explicit {
        return is_installation(dir).then(|| dir.to_owned());
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        if out.status.success() {
            candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    for (parent, prefix, suffix) in [
        ("/usr/lib/postgresql", "", "bin"),
        ("/usr", "pgsql-", "bin"),
        ("/opt/homebrew/opt", "postgresql@", "bin"),
        ("/usr/local/opt", "postgresql@", "bin"),
    ] {
        candidates.extend(versioned_dirs(parent, prefix, suffix));
    }
    candidates.extend(
        [
            "/opt/homebrew/opt/postgresql/bin",
            "/usr/local/opt/postgresql/bin",
            "/opt/homebrew/bin",
            "/usr/local/bin",
            "/usr/local/pgsql/bin",
        ]
        .map(PathBuf::from),
    );
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates.into_iter().find(|d| is_installation(d))
}

/// `<parent>/<prefix><number>/<suffix>`, newest number first.
fn versioned_dirs(parent: &str, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found: Vec<(f64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version: f64 = name.strip_prefix(prefix)?.parse().ok()?;
            Some((version, e.path().join(suffix)))
        })
        .collect();
    found.sort_by(|a, b| b.0.total_cmp(&a.0));
    found.into_iter().map(|(_, p)| p).collect()
}

fn is_installation(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|b| dir.join(b).is_file())
}

/// A private cluster in use by this process.
pub struct Cluster {
    data_dir: PathBuf,
    bindir: PathBuf,
    /// `Some("postgres")` when postgame runs as root.
    run_as: Option<String>,
    url: String,
    /// This process started it, so it stops it.
    started_here: bool,
}

impl Cluster {
    /// Creates the cluster in `data_dir` on first use, starts it unless it already runs,
    /// and returns it with the URL of `database` on its socket (the database itself is
    /// created by the caller).
    pub async fn start(data_dir: &Path, bindir: &Path, database: &str) -> anyhow::Result<Self> {
        let mut cluster = Self::open(data_dir, bindir, database).await?;
        if cluster.status().await? {
            tracing::info!(
                "the private cluster in {} is already running: using it",
                cluster.data_dir.display()
            );
            return Ok(cluster);
        }
        cluster.write_settings()?;
        cluster.start_server().await?;
        cluster.started_here = true;
        Ok(cluster)
    }

    /// Starts the (stopped) server of this folder and waits until it accepts connections.
    pub async fn start_server(&self) -> anyhow::Result<()> {
        let log = self.data_dir.join("postgres.log");
        let mut start = self.pg_command("pg_ctl");
        start
            .args(["start", "-w", "-s", "-t", PG_CTL_WAIT_SECONDS, "-D"])
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&log);
        let out = run(self.as_user(start))
            .await
            .context("cannot run pg_ctl")?;
        if !out.status.success() {
            bail!(
                "the private PostgreSQL cluster in {} did not start: {}\n(its log is {})",
                self.data_dir.display(),
                output_text(&out),
                log.display()
            );
        }
        Ok(())
    }

    /// Stops the server without giving it up (`postgame chaos` starts it again with
    /// [`Self::start_server`]): `-m fast` (sessions ended, a checkpoint written) or, when
    /// `crash`, `-m immediate` (no checkpoint: recovery runs at the next start, as after a
    /// crash of the host).
    pub async fn stop_server(&self, crash: bool) -> anyhow::Result<()> {
        let out = run(self.stop_command_mode(if crash { "immediate" } else { "fast" }))
            .await
            .context("cannot run pg_ctl")?;
        if !out.status.success() {
            bail!("pg_ctl stop failed: {}", output_text(&out));
        }
        Ok(())
    }

    /// The cluster of `data_dir` without starting it: created (initdb) when the folder
    /// holds none yet.
    pub async fn open(data_dir: &Path, bindir: &Path, database: &str) -> anyhow::Result<Self> {
        let run_as = if running_as_root().await {
            Some(SYSTEM_USER.to_owned())
        } else {
            None
        };
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create the folder {}", data_dir.display()))?;
        let data_dir = std::fs::canonicalize(data_dir)
            .with_context(|| format!("cannot resolve the folder {}", data_dir.display()))?;
        let socket = data_dir.join(format!(".s.PGSQL.{SOCKET_PORT}"));
        let socket_len = socket.as_os_str().len();
        if socket_len > MAX_SOCKET_PATH {
            bail!(
                "the private cluster's folder {} is too deep for its Unix socket ({socket_len} \
                 bytes, at most {MAX_SOCKET_PATH}): choose a shorter --data-dir",
                data_dir.display()
            );
        }
        let cluster = Self {
            url: socket_url(&data_dir, database),
            data_dir,
            bindir: bindir.to_owned(),
            run_as,
            started_here: false,
        };
        if !cluster.data_dir.join("PG_VERSION").exists() {
            cluster.init().await?;
        }
        Ok(cluster)
    }

    /// `initdb` into the (empty) folder: superuser `postgres`, trust authentication (only
    /// the owner can reach the socket), UTF-8, C locale.
    async fn init(&self) -> anyhow::Result<()> {
        let dir = &self.data_dir;
        if std::fs::read_dir(dir)?.next().is_some() {
            bail!(
                "{} is neither empty nor a PostgreSQL cluster: choose another --data-dir or \
                 empty it",
                dir.display()
            );
        }
        if let Some(user) = &self.run_as {
            let mut chown = StdCommand::new("chown");
            chown.arg(format!("{user}:")).arg(dir);
            let out = run(chown).await.context("cannot run chown")?;
            if !out.status.success() {
                bail!(
                    "postgame runs as root, so the private cluster runs as the system user \
                     {user:?}, but {} cannot be given to it: {}",
                    dir.display(),
                    output_text(&out)
                );
            }
            let mut test = StdCommand::new("test");
            test.arg("-w").arg(dir);
            let reach = run(self.as_user(test)).await.context("cannot run test")?;
            if !reach.status.success() {
                bail!(
                    "postgame runs as root, so the private cluster runs as the system user \
                     {user:?}, which cannot reach {} (a folder above it is closed to other \
                     users, such as /root): choose a --data-dir it can reach, for example \
                     /var/tmp/postgame",
                    dir.display()
                );
            }
        }
        tracing::info!(
            "creating a private PostgreSQL cluster in {} (first start: a few seconds)",
            dir.display()
        );
        let mut initdb = self.pg_command("initdb");
        initdb
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "-D",
            ])
            .arg(dir);
        let out = run(self.as_user(initdb))
            .await
            .context("cannot run initdb")?;
        if !out.status.success() {
            bail!("initdb failed in {}: {}", dir.display(), output_text(&out));
        }
        // The settings of every start live in postgame.conf, rewritten each time (the
        // folder may have moved); postgresql.conf includes it once.
        let conf = dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).context("cannot read postgresql.conf")?;
        text.push_str("\n# Written by postgame: listen on a Unix socket in this folder only.\ninclude_if_exists = 'postgame.conf'\n");
        std::fs::write(&conf, text).context("cannot write postgresql.conf")?;
        Ok(())
    }

    /// Writes `postgame.conf`: no TCP, the socket in the data folder.
    fn write_settings(&self) -> anyhow::Result<()> {
        let dir = self.data_dir.to_string_lossy().replace('\'', "''");
        let path = self.data_dir.join("postgame.conf");
        std::fs::write(
            &path,
            format!(
                "# Rewritten by postgame at every start.\nlisten_addresses = ''\n\
                 unix_socket_directories = '{dir}'\nport = {SOCKET_PORT}\n"
            ),
        )
        .with_context(|| format!("cannot write {}", path.display()))?;
        if let Some(user) = &self.run_as {
            // Written by root: the server must still be able to read it.
            StdCommand::new("chown")
                .arg(format!("{user}:"))
                .arg(&path)
                .status()
                .context("cannot run chown")?;
        }
        Ok(())
    }

    /// Whether the server of this folder runs (`pg_ctl status`).
    pub async fn status(&self) -> anyhow::Result<bool> {
        let mut status = self.pg_command("pg_ctl");
        status.arg("status").arg("-D").arg(&self.data_dir);
        let out = run(self.as_user(status))
            .await
            .context("cannot run pg_ctl")?;
        Ok(out.status.success())
    }

    /// Stops the server if this process started it.
    pub async fn stop(mut self) {
        if self.started_here {
            self.started_here = false;
            match run(self.stop_command()).await {
                Ok(out) if out.status.success() => {
                    tracing::info!("stopped the private PostgreSQL cluster")
                }
                Ok(out) => tracing::warn!(
                    "could not stop the private PostgreSQL cluster: {}",
                    output_text(&out)
                ),
                Err(e) => tracing::warn!("could not run pg_ctl stop: {e}"),
            }
        }
    }

    /// Stops the server whoever started it (`postgame cluster stop`).
    pub async fn stop_any(self) -> anyhow::Result<bool> {
        if !self.status().await? {
            return Ok(false);
        }
        let out = run(self.stop_command()).await?;
        if !out.status.success() {
            bail!("pg_ctl stop failed: {}", output_text(&out));
        }
        Ok(true)
    }

    /// Leaves the server running when this value goes (`postgame cluster start`).
    pub fn detach(mut self) {
        self.started_here = false;
    }

    fn stop_command(&self) -> StdCommand {
        self.stop_command_mode("fast")
    }

    fn stop_command_mode(&self, mode: &str) -> StdCommand {
        let mut cmd = self.pg_command("pg_ctl");
        cmd.args([
            "stop",
            "-w",
            "-s",
            "-m",
            mode,
            "-t",
            PG_CTL_WAIT_SECONDS,
            "-D",
        ])
        .arg(&self.data_dir);
        self.as_user(cmd)
    }

    /// The URL of the cluster's database (over its socket).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether this process started the server (and so stops it).
    pub fn started_here(&self) -> bool {
        self.started_here
    }

    /// A PostgreSQL program of the installation (pass it through [`Self::as_user`]).
    fn pg_command(&self, program: &str) -> StdCommand {
        let mut cmd = StdCommand::new(self.bindir.join(program));
        cmd.stdin(std::process::Stdio::null());
        cmd
    }

    /// `cmd` as [`SYSTEM_USER`] when running as root: `setpriv` (or `runuser`) in front
    /// of it; `cmd` unchanged otherwise.
    fn as_user(&self, cmd: StdCommand) -> StdCommand {
        match &self.run_as {
            None => cmd,
            Some(user) => {
                let program = cmd.get_program().to_owned();
                let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
                let mut wrapped = if which("setpriv") {
                    let mut c = StdCommand::new("setpriv");
                    c.arg(format!("--reuid={user}"))
                        .arg(format!("--regid={user}"))
                        .arg("--init-groups")
                        .arg("--");
                    c
                } else {
                    let mut c = StdCommand::new("runuser");
                    c.args(["-u", user, "--"]);
                    c
                };
                wrapped.arg(program).args(args);
                // The cluster's programs must not start in root's working folder.
                wrapped.current_dir("/");
                wrapped.stdin(std::process::Stdio::null());
                wrapped
            }
        }
    }
}

impl Drop for Cluster {
    /// On an error path (no [`Cluster::stop`]): stop what this process started.
    fn drop(&mut self) {
        if self.started_here {
            let _ = self.stop_command().output();
        }
    }
}

/// `postgame cluster start|stop|status`: the private cluster of `--data-dir` for scripts
/// (start leaves it running and prints its URL).
pub async fn command(args: crate::config::ClusterArgs) -> anyhow::Result<()> {
    use crate::config::ClusterAction;
    let mut db = args.db;
    if let ClusterAction::Start { if_needed: true } = args.action {
        // What `serve` would use; a private cluster started for it is left running.
        let cluster = crate::setup::prepare(&mut db).await?;
        println!("{}", db.database_url);
        if let Some(c) = cluster {
            c.detach();
        }
        return Ok(());
    }
    let db = &db;
    let bindir = find_installation(db.pg_bindir.as_deref())
        .context("no PostgreSQL installation found (set --pg-bindir)")?;
    let database = crate::setup::parse_url(&db.default_database_url)?
        .get_database()
        .unwrap_or("postgame")
        .to_owned();
    match args.action {
        ClusterAction::Start { .. } => {
            let cluster = Cluster::start(&db.data_dir, &bindir, &database).await?;
            crate::setup::database_ready(cluster.url()).await?;
            println!("{}", cluster.url());
            cluster.detach();
        }
        ClusterAction::Stop => {
            if !db.data_dir.join("PG_VERSION").exists() {
                println!("no private cluster in {}", db.data_dir.display());
                return Ok(());
            }
            let cluster = Cluster::open(&db.data_dir, &bindir, &database).await?;
            let stopped = cluster.stop_any().await?;
            println!("{}", if stopped { "stopped" } else { "not running" });
        }
        ClusterAction::Status => {
            if !db.data_dir.join("PG_VERSION").exists() {
                println!("no private cluster in {}", db.data_dir.display());
                return Ok(());
            }
            let cluster = Cluster::open(&db.data_dir, &bindir, &database).await?;
            let running = cluster.status().await?;
            println!(
                "{} {}",
                if running { "running" } else { "stopped" },
                cluster.url()
            );
            cluster.detach();
        }
    }
    Ok(())
}

/// `postgres://postgres@localhost:5432/<database>?host=<data_dir>` (the path percent-encoded).
fn socket_url(dir: &Path, database: &str) -> String {
    let mut host = String::new();
    for b in dir.as_os_str().to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            host.push(char::from(b));
        } else {
            host.push_str(&format!("%{b:02X}"));
        }
    }
    format!("postgres://postgres@localhost:{SOCKET_PORT}/{database}?host={host}")
}

/// Whether this process runs as root (`id -u`; no unsafe code for `geteuid`).
async fn running_as_root() -> bool {
    let mut id = StdCommand::new("id");
    id.arg("-u");
    match run(id).await {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim() == "0",
        Err(_) => false,
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// The last lines a program printed, for an error message.
fn output_text(out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" / ");
    if tail.is_empty() {
        format!("exit status {}", out.status)
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_url_encodes_the_folder() {
        let url = socket_url(Path::new("/tmp/a b/pgdata"), "postgame");
        assert_eq!(
            url,
            "postgres://postgres@localhost:5432/postgame?host=%2Ftmp%2Fa%20b%2Fpgdata"
        );
        let opts: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
        assert_eq!(opts.get_database(), Some("postgame"));
        assert_eq!(
            crate::setup::describe(&opts),
            "the Unix socket /tmp/a b/pgdata/.s.PGSQL.5432"
        );
    }
}
