//! The project's own static binary, for images built `FROM scratch` and for the systemd
//! container: `BATCHWATCH_STATIC_BIN` when set, else built here (once per test run; cargo
//! makes it a no-op when nothing changed) into `target/static/`, a target directory of its own
//! so the build never waits on the one running the tests.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The target triple of the static build.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The path of a statically linked `batchwatch` (release build).
pub fn static_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("BATCHWATCH_STATIC_BIN") {
            return PathBuf::from(path);
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let target_dir = root.join("target/static");
        println!(
            "building the static binary in {} (a first build takes minutes)",
            target_dir.display()
        );
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        without_cargo_test_env(&mut build);
        let status = build
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                TARGET,
                "--bin",
                "batchwatch",
            ])
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("SQLX_OFFLINE", "true")
            .current_dir(&root)
            .status()
            .expect("run cargo");
        assert!(status.success(), "the static build failed");
        target_dir.join(TARGET).join("release/batchwatch")
    })
    .clone()
}

/// Removes the variables cargo set for this test run from `command`, a nested cargo build
/// (they would make build scripts run again), keeping the toolchain's own.
pub fn without_cargo_test_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let ours = key == "CARGO_HOME" || key == "RUSTUP_HOME" || key == "RUSTUP_TOOLCHAIN";
        if !ours && (key.starts_with("CARGO") || key.starts_with("RUSTC") || key == "OUT_DIR") {
            command.env_remove(key.as_ref());
        }
    }
}
