//! Whether tests that need a Docker engine can run. Without one they are skipped with a printed
//! reason, unless `BATCHWATCH_REQUIRE_DOCKER=1` (which `.ci/run` sets): then they fail.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use tokio::sync::OnceCell;

/// Whether tests that need Docker must fail, rather than skip, when it is missing.
fn required() -> bool {
    std::env::var("BATCHWATCH_REQUIRE_DOCKER").as_deref() == Ok("1")
}

/// Reports why a Docker test cannot run: skips it (prints the reason), or fails it when
/// `BATCHWATCH_REQUIRE_DOCKER=1`.
pub fn cannot_run(reason: &str) {
    if required() {
        panic!("BATCHWATCH_REQUIRE_DOCKER=1, but {reason}");
    }
    eprintln!("skipped: {reason}");
}

/// Whether a Docker engine answers (asked once per test process). Err says why not.
pub async fn engine() -> Result<(), String> {
    static ANSWER: OnceCell<Result<(), String>> = OnceCell::const_new();
    ANSWER
        .get_or_init(|| async {
            let info = cli(&["info", "--format", "{{.ServerVersion}}"])
                .await
                .map_err(|e| format!("no Docker engine answers ({e})"))?;
            if info.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "no Docker engine answers (docker info: {})",
                    String::from_utf8_lossy(&info.stderr).trim()
                ))
            }
        })
        .await
        .clone()
}

/// Whether Docker tests can run here; prints why not (or fails, see [`cannot_run`]).
pub async fn available() -> bool {
    match engine().await {
        Ok(()) => true,
        Err(reason) => {
            cannot_run(&reason);
            false
        }
    }
}

/// Runs the `docker` command line, for what testcontainers does not offer.
pub async fn cli(args: &[&str]) -> Result<std::process::Output, String> {
    run_host("docker", args).await
}

/// Runs `docker ARGS`; panics with its error output unless it succeeds. Its output, trimmed.
pub async fn must(args: &[&str]) -> String {
    must_with_env(args, &[]).await
}

/// As [`must`], with `vars` added to the command's environment (for `docker create -e NAME`,
/// which passes a secret without writing it on a command line).
pub async fn must_with_env(args: &[&str], vars: &[(&str, &str)]) -> String {
    let out = run_host_with_env("docker", args, vars)
        .await
        .unwrap_or_else(|e| panic!("docker {}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs a program on the host and collects its output.
pub async fn run_host(program: &str, args: &[&str]) -> Result<std::process::Output, String> {
    run_host_with_env(program, args, &[]).await
}

async fn run_host_with_env(
    program: &str,
    args: &[&str],
    vars: &[(&str, &str)],
) -> Result<std::process::Output, String> {
    tokio::process::Command::new(program)
        .args(args)
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {program}: {e}"))
}

/// The image `.ci/debian-image KIND` builds (`systemd`, `postgres`), built at the first call
/// in this test process (the script caches it by its recipe, so later runs reuse it); Err says
/// why Docker tests cannot use it here (no engine, not root for a first build).
pub async fn debian_image(kind: &'static str) -> Result<String, String> {
    /// A build's outcome, once it ran: the tag, or why there is none.
    type Built = Arc<OnceCell<Result<String, String>>>;
    static BUILT: std::sync::Mutex<BTreeMap<&str, Built>> = std::sync::Mutex::new(BTreeMap::new());
    let cell = BUILT.lock().expect("lock").entry(kind).or_default().clone();
    cell.get_or_init(|| async {
        engine().await?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/debian-image");
        let started = std::time::Instant::now();
        let build = run_host(script.to_str().expect("UTF-8 path"), &[kind]).await?;
        if !build.status.success() {
            return Err(format!(
                "the {kind} image could not be built by .ci/debian-image:\n{}",
                String::from_utf8_lossy(&build.stderr).trim()
            ));
        }
        let stdout = String::from_utf8_lossy(&build.stdout);
        let tag = stdout.lines().last().unwrap_or_default().trim().to_owned();
        println!(
            "{kind} image {tag} ready in {:?} (.ci/debian-image)",
            started.elapsed()
        );
        Ok(tag)
    })
    .await
    .clone()
}
