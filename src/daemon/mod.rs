//! The daemon, `batchwatch run`.

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::config::Settings;
use crate::store::{Access, Store};

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    // Before anything else, so a signal that comes during start-up is not fatal.
    let mut signals = Signals::install()?;
    let store = Store::open(
        &settings.database.path,
        settings.database.busy_timeout.get(),
        Access::Migrate,
    )
    .await
    .context("opening the database")?;
    tracing::info!(
        database = %settings.database.path.display(),
        queue = %settings.queue.dir.display(),
        schema_version = crate::store::known_schema_version(),
        "batchwatch started"
    );
    let signal = signals.recv().await;
    tracing::info!(signal, "stopping");
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// Waits for the next signal and says which it was.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
