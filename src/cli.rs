//! The command line: parses arguments and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::api::ApiKey;
use crate::config::{ConfigError, KeySource, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "batchwatch",
    version,
    about = "Runs OpenAI-style Batch API jobs from a queue directory"
)]
pub struct Cli {
    /// Configuration file (default: /etc/batchwatch/batchwatch.toml when it exists).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the configuration and print the one in effect (the API key is never printed).
    CheckConfig,
    /// Print the example configuration, which is also the built-in defaults.
    PrintDefaultConfig,
    /// Run the built-in simulator of the OpenAI Batch and Files API.
    Sim(Box<crate::sim::SimArgs>),
}

/// Parses the command line, runs the command, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            if let Some(config_err) = err.downcast_ref::<ConfigError>() {
                eprintln!("batchwatch: {config_err}");
                return ExitCode::from(crate::EXIT_CONFIG);
            }
            eprintln!("batchwatch: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::PrintDefaultConfig => {
            print!("{}", crate::config::DEFAULT_CONFIG);
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim(args) => crate::sim::run(*args),
        Command::CheckConfig => {
            let settings = Settings::load(cli.config.as_deref())?;
            println!("# The configuration is valid. In effect:");
            print!("{}", settings.to_toml());
            println!("{}", key_status(&settings.api.key_source()));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The `check-config` line about the API key: whether it can be read here, and from where.
/// An unreadable key is reported, not an error: the check may run outside the service, where
/// a systemd credential does not exist.
fn key_status(source: &KeySource) -> String {
    match ApiKey::load(source) {
        Ok(key) => format!(
            "# API key: read from {source} ({} characters; value not shown)",
            key.char_count()
        ),
        Err(err) => match err.key {
            Some(key) => format!("# API key: NOT readable here: `{key}`: {}", err.problem),
            None => format!("# API key: NOT readable here: {}", err.problem),
        },
    }
}

/// Builds the multi-threaded runtime the async commands run on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn check_config_says_where_the_key_was_read_without_showing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-check-config-SECRET\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let line = key_status(&KeySource::File(path.clone()));
        assert_eq!(
            line,
            format!(
                "# API key: read from file {} (api.key_file) (22 characters; value not shown)",
                path.display()
            )
        );
    }

    #[test]
    fn check_config_reports_an_unreadable_key_with_its_config_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-check-config-SECRET").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let line = key_status(&KeySource::File(path));
        assert!(
            line.starts_with("# API key: NOT readable here: `api.key_file`: the key file "),
            "{line}"
        );
        assert!(line.contains("chmod 600"), "{line}");
        assert!(!line.contains("SECRET"), "{line}");
    }
}
