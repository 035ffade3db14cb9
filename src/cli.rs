//! The command line: parses arguments and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{ConfigError, Settings};

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
            println!("# API key source: {}", settings.api.key_source());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Builds the multi-threaded runtime the async commands run on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
