//! A PostgreSQL server for the tests, started once per test process from Debian's
//! `postgresql` package (its binaries are under /usr/lib/postgresql/VERSION/bin, not on PATH):
//! `initdb` into a temporary directory, then `postgres` on a free loopback port, as the
//! `postgres` user when the tests run as root (the server refuses root). Each test gets a
//! database of its own ([`database`]). The server dies with the test process (a parent-death
//! signal), and a directory a killed run left is removed by the next.
//!
//! Without the package the tests that need it are skipped with a printed reason, unless
//! `BATCHWATCH_REQUIRE_POSTGRES=1` (which `.ci/run` sets): then they fail.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A running server: its port, reached as the `postgres` role without a password, and as
/// [`PASSWORD_ROLE`] only with its password (scram-sha-256); over TLS when the client asks,
/// with a certificate for 127.0.0.1 from a CA of its own.
#[derive(Debug)]
pub struct Server {
    port: u16,
    /// The CA's certificate (PEM), for `sslrootcert`.
    ca: std::path::PathBuf,
}

/// A role the server admits only with its password, [`PASSWORD`].
pub const PASSWORD_ROLE: &str = "bw_password";
/// The password of [`PASSWORD_ROLE`]: a test checks that it shows nowhere.
pub const PASSWORD: &str = "pg-Secret-7f3a91c2";

/// Who may connect how: every role but [`PASSWORD_ROLE`] without a password, from loopback.
const HBA: &str = "local all all trust
host all bw_password 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
";

/// A fresh database on the test server; None, after saying why, when there is no server.
pub async fn database() -> Option<String> {
    let server = server()?;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "t{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    create_database(&server.url("postgres"), &name).await;
    Some(server.url(&name))
}

/// Creates the database `name` on the server whose `postgres` database is at `admin`.
pub async fn create_database(admin: &str, name: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test server at {admin}: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("creating the database {name}: {e}"));
    let _ = conn.close().await;
}

/// A fresh database owned by [`PASSWORD_ROLE`], and its URL, which holds no password.
pub async fn database_of_password_role() -> Option<String> {
    let url = database().await?;
    let server = server()?;
    let name = url.rsplit('/').next().expect("a database name").to_owned();
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&server.url("postgres"))
        .await
        .expect("connecting to the test server");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} OWNER TO {PASSWORD_ROLE}"
    )))
    .execute(&mut conn)
    .await
    .expect("handing the database to the password role");
    let _ = conn.close().await;
    Some(format!(
        "postgres://{PASSWORD_ROLE}@127.0.0.1:{}/{name}",
        server.port
    ))
}

impl Server {
    /// The file of the CA that signed the server's certificate.
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

/// Whether tests that need PostgreSQL must fail, rather than skip, without it.
fn required() -> bool {
    std::env::var("BATCHWATCH_REQUIRE_POSTGRES").as_deref() == Ok("1")
}

/// The server, started at the first call; None, after saying why, when it cannot be.
pub fn server() -> Option<&'static Server> {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    match SERVER.get_or_init(start) {
        Ok(server) => Some(server),
        Err(reason) if required() => panic!("BATCHWATCH_REQUIRE_POSTGRES=1, but {reason}"),
        Err(reason) => {
            eprintln!("skipped: {reason}");
            None
        }
    }
}

/// The directory of the newest installed server's binaries.
fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file() && bin.join("postgres").is_file())
        .collect();
    found.sort_by_key(|bin| {
        bin.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
    });
    found.pop()
}

/// The user the server runs as: `postgres` when the tests run as root, else the tests' own.
fn server_user() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let out = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .map_err(|e| format!("id -u postgres: {e}"))?;
    let uid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| "there is no postgres user to run the server as".to_owned())?;
    let out = Command::new("id")
        .args(["-g", "postgres"])
        .output()
        .map_err(|e| format!("id -g postgres: {e}"))?;
    let gid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| "the postgres user has no group".to_owned())?;
    Ok(Some((uid, gid)))
}

/// Runs `command` as `user` (when given).
fn as_user(command: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    command
}

fn start() -> Result<Server, String> {
    let bin = bin_dir().ok_or(
        "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; Debian's postgresql package)",
    )?;
    let user = server_user()?;
    remove_stale_dirs();
    let dir = std::env::temp_dir().join(format!("batchwatch-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", dir.display()))?;
    }
    let data = dir.join("data");
    let out = as_user(&mut Command::new(bin.join("initdb")), user)
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(&data)
        .output()
        .map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::write(data.join("pg_hba.conf"), HBA).map_err(|e| format!("pg_hba.conf: {e}"))?;
    let ca = certificates(&dir, &data, user)?;
    let port = super::unused_port();
    let log = std::fs::File::create(dir.join("server.log")).map_err(|e| e.to_string())?;
    if let Some((uid, gid)) = user {
        let _ = std::os::unix::fs::chown(dir.join("server.log"), Some(uid), Some(gid));
    }
    let mut server = Command::new(bin.join("postgres"));
    as_user(&mut server, user)
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(&dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=300",
            "-c",
            "ssl=on",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    // SAFETY: prctl is async-signal-safe; it runs in the child after its user was set, so the
    // setting survives the exec and the server gets SIGINT (a fast shutdown) when this thread's
    // process ends.
    unsafe {
        server.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The parent-death signal follows the thread that started the server: a thread of its own
    // that lives as long as the process.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let child = server.spawn();
        let ok = child.is_ok();
        let _ = tx.send(
            child
                .map(drop)
                .map_err(|e| format!("starting postgres: {e}")),
        );
        if ok {
            loop {
                std::thread::park();
            }
        }
    });
    rx.recv().map_err(|e| e.to_string())??;
    let started = Instant::now();
    let accepting = || {
        Command::new(bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    };
    while !accepting() {
        if started.elapsed() > Duration::from_secs(30) {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            return Err(format!(
                "postgres did not accept connections within 30 s:\n{log}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new("psql")
        .args([
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .args(["-p", &port.to_string(), "-d", "postgres", "-c"])
        .arg(format!(
            "CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{PASSWORD}'"
        ))
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "creating the password role failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(Server { port, ca })
}

/// Removes the directories of earlier test processes that no longer run.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("batchwatch-pg-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A CA of its own (its certificate in `dir`, returned) and a certificate it signed for
/// 127.0.0.1, which the server finds in its data directory (`server.crt`, `server.key`, the
/// key readable by the server's user alone, as it demands).
fn certificates(
    dir: &Path,
    data: &Path,
    user: Option<(u32, u32)>,
) -> Result<std::path::PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |e: &dyn std::fmt::Display| format!("making the test certificates: {e}");
    let ca_key = rcgen::KeyPair::generate().map_err(|e| fail(&e))?;
    let mut ca_params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| fail(&e))?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "batchwatch test PostgreSQL CA");
    let ca_cert = ca_params.self_signed(&ca_key).map_err(|e| fail(&e))?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().map_err(|e| fail(&e))?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .map_err(|e| fail(&e))?
        .signed_by(&key, &issuer)
        .map_err(|e| fail(&e))?;
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, ca_cert.pem()).map_err(|e| fail(&e))?;
    for (name, text, mode) in [
        ("server.crt", cert.pem(), 0o644),
        ("server.key", key.serialize_pem(), 0o600),
    ] {
        let path = data.join(name);
        std::fs::write(&path, text).map_err(|e| fail(&e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| fail(&e))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|e| fail(&e))?;
        }
    }
    Ok(ca)
}
