//! A scratch PostgreSQL server for a bench: Debian's postgresql package, a cluster made with
//! `initdb` in the bench's temporary directory, on a free loopback port, stopped when dropped.
//! As `.ci/sqlx-prepare` does, but with the server's defaults for durability (fsync on,
//! synchronous commit), since the bench measures what they cost.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::procs::{children, cpu_secs, reaped_children_cpu_secs, write_bytes};

/// Where Debian installs the server's binaries, one directory per major version.
const INSTALL_ROOT: &str = "/usr/lib/postgresql";
/// The only user: the cluster trusts every local connection (`initdb -A trust`).
const USER: &str = "postgres";

/// A running server, stopped (`pg_ctl -m fast stop`) when dropped.
pub struct Server {
    bin: PathBuf,
    /// Its major version.
    pub version: u32,
    data: PathBuf,
    /// Where the server writes its log.
    pub log: PathBuf,
    pub port: u16,
    running: bool,
}

impl Server {
    /// Makes a cluster under `dir/postgres` and starts it. `dir` is made readable by all (the
    /// server runs as the postgres user when the bench runs as root, and must reach its own
    /// directory inside).
    pub fn start(dir: &Path) -> anyhow::Result<Server> {
        let (version, bin) = installed_bin()?;
        let home = dir.join("postgres");
        std::fs::create_dir_all(&home)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} readable by the server", dir.display()))?;
        if is_root() {
            let (uid, gid) = server_user()?;
            std::os::unix::fs::chown(&home, Some(uid), Some(gid))
                .with_context(|| format!("giving {} to the {USER} user", home.display()))?;
        }
        let data = home.join("data");
        let log = home.join("server.log");
        let mut server = Server {
            bin,
            version,
            data,
            log,
            port: free_port()?,
            running: false,
        };
        server
            .run("initdb", |c| {
                c.args(["-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync", "-D"])
                    .arg(&server.data)
            })
            .context("initdb")?;
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {}",
            server.port,
            home.display()
        );
        server
            .run("pg_ctl", |c| {
                c.arg("-D")
                    .arg(&server.data)
                    .arg("-l")
                    .arg(&server.log)
                    .args(["-w", "-o", &options, "start"])
            })
            .with_context(|| format!("starting PostgreSQL; see {}", server.log.display()))?;
        server.running = true;
        Ok(server)
    }

    /// The URL of `database` on this server, as the postgres user (no password: trusted).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates an empty database `name` (a plain identifier: it is not quoted).
    pub async fn create_database(&self, name: &str) -> anyhow::Result<()> {
        let pool = sqlx::PgPool::connect(&self.url("postgres")).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .with_context(|| format!("creating the database {name}"))?;
        pool.close().await;
        Ok(())
    }

    /// The postmaster's pid: the first line of `DATADIR/postmaster.pid`.
    pub fn postmaster_pid(&self) -> anyhow::Result<u32> {
        let path = self.data.join("postmaster.pid");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        text.lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .with_context(|| format!("{} does not start with a pid", path.display()))
    }

    /// CPU seconds the whole server has used so far: the postmaster, every child it runs now
    /// (backends, WAL writer, checkpointer, autovacuum…), and every child that ended (the
    /// postmaster reaps them all, so their time is in its `cutime + cstime`). The difference of
    /// two readings is the server's CPU between them, connections that came and went
    /// included.
    pub fn cpu_secs(&self) -> anyhow::Result<f64> {
        let postmaster = self.postmaster_pid()?;
        let mut total = cpu_secs(postmaster)? + reaped_children_cpu_secs(postmaster)?;
        for child in children(postmaster)? {
            // A child that ended since the listing is counted by the postmaster once reaped.
            total += cpu_secs(child).unwrap_or(0.0);
        }
        Ok(total)
    }

    /// Bytes the whole server has written to storage so far (its data files, its WAL, its
    /// statistics), counted as [`Server::cpu_secs`] counts CPU: the postmaster with the
    /// children it reaped, and every child it runs now.
    pub fn write_bytes(&self) -> anyhow::Result<u64> {
        let postmaster = self.postmaster_pid()?;
        let mut total = write_bytes(postmaster)?;
        for child in children(postmaster)? {
            total += write_bytes(child).unwrap_or(0);
        }
        Ok(total)
    }

    /// Runs one of the server's programs (as the postgres user when the bench is root),
    /// failing with its output when it fails.
    fn run(
        &self,
        program: &str,
        args: impl FnOnce(&mut Command) -> &mut Command,
    ) -> anyhow::Result<()> {
        let path = self.bin.join(program);
        let mut command = if is_root() {
            let mut setpriv = Command::new("setpriv");
            setpriv
                .args([
                    &format!("--reuid={USER}"),
                    &format!("--regid={USER}"),
                    "--init-groups",
                ])
                .arg(&path);
            setpriv
        } else {
            Command::new(&path)
        };
        args(&mut command);
        let output = command
            .output()
            .with_context(|| format!("running {}", path.display()))?;
        if !output.status.success() {
            bail!(
                "{program} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.running {
            self.running = false;
            let stopped = self.run("pg_ctl", |c| {
                c.arg("-D")
                    .arg(&self.data)
                    .args(["-m", "fast", "-w", "stop"])
            });
            if let Err(error) = stopped {
                eprintln!("stopping PostgreSQL: {error:#}");
            }
        }
    }
}

/// The highest PostgreSQL version installed, and its `bin` directory.
fn installed_bin() -> anyhow::Result<(u32, PathBuf)> {
    let not_installed = || {
        anyhow::anyhow!(
            "--db postgres needs a PostgreSQL server: install Debian's postgresql package \
             (its binaries are looked for in {INSTALL_ROOT}/VERSION/bin)"
        )
    };
    let versions = std::fs::read_dir(INSTALL_ROOT).map_err(|_| not_installed())?;
    versions
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .ok_or_else(not_installed)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The postgres user's uid and gid, from the password database.
fn server_user() -> anyhow::Result<(u32, u32)> {
    let name = std::ffi::CString::new(USER)?;
    // SAFETY: `name` is a valid C string; the entry getpwnam returns is read at once, before
    // any other call that could overwrite it.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    anyhow::ensure!(
        !entry.is_null(),
        "there is no {USER} user (Debian's postgresql package makes it)"
    );
    // SAFETY: checked non-null above; it points at getpwnam's static entry.
    Ok(unsafe { ((*entry).pw_uid, (*entry).pw_gid) })
}

/// A loopback port nobody listens on now (the kernel's choice for port 0).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
