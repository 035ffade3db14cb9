//! Starting a simulator ([`start`]) and the handle that controls and stops it ([`SimHandle`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::SecretString;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{Counts, HeldFile, Observations, Step, Stepped};
use crate::conn::{ConnKill, KillableListener};
use crate::model::{Faults, ScriptedFault, SimConfig, Stats};
use crate::state::Shared;
use crate::{lifecycle, persist, routes};

/// How long a shutdown waits for open connections before closing them.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// A running simulator. Dropping it stops the server; [`SimHandle::shutdown`] also waits.
pub struct SimHandle {
    addr: SocketAddr,
    seed: u64,
    shared: Arc<Shared>,
    stop: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
    ticker: Option<JoinHandle<()>>,
    /// Whether [`SimHandle::shutdown`] saves the state (the data dir is not a temporary one).
    persist: bool,
}

/// Starts a simulator listening on `listen` (port 0 picks a free port).
pub async fn start(listen: SocketAddr, mut config: SimConfig) -> anyhow::Result<SimHandle> {
    config.validate()?;
    let seed = *config.seed.get_or_insert_with(|| fastrand::u64(..));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the simulator to {listen}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let shared = Arc::new(Shared::new(&config)?);
    persist::resume(&shared, &config)?;
    let stop = CancellationToken::new();
    let app = routes::router(shared.clone());
    let server = axum::serve(
        KillableListener(listener),
        app.into_make_service_with_connect_info::<ConnKill>(),
    )
    .with_graceful_shutdown(stop.clone().cancelled_owned());
    let server = tokio::spawn(async move { server.await });
    let ticker = tokio::spawn(lifecycle::run_ticker(shared.clone(), stop.clone()));
    tracing::info!(%addr, seed, "simulator listening");
    Ok(SimHandle {
        addr,
        seed,
        shared,
        stop,
        server: Some(server),
        ticker: Some(ticker),
        persist: config.data_dir.is_some(),
    })
}

impl SimHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/v1`, the OpenAI-style base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://ADDR/openai/v1`, the Azure-style base URL.
    pub fn azure_base_url(&self) -> String {
        format!("http://{}/openai/v1", self.addr)
    }

    /// `http://ADDR/admin`, the root of the admin API.
    pub fn admin_url(&self) -> String {
        format!("http://{}/admin", self.addr)
    }

    /// Where file contents are kept (a temporary directory unless one was configured).
    pub fn data_dir(&self) -> &Path {
        &self.shared.data_dir
    }

    /// The seed in use (the configured one, or the one drawn at start).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Batches per job, requests per endpoint, faults injected, every batch's history.
    pub async fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// The standing faults.
    pub async fn faults(&self) -> Faults {
        self.shared.faults()
    }

    /// Replaces the standing faults; refuses invalid shares.
    pub async fn set_faults(&self, faults: Faults) -> anyhow::Result<()> {
        self.shared
            .set_faults(faults)
            .map_err(|e| anyhow::anyhow!("invalid faults: {e}"))
    }

    /// Appends an entry to the scripted fault queue.
    pub async fn push_fault(&self, fault: ScriptedFault) {
        self.shared.push_script(vec![fault]);
    }

    /// The scripted faults not used up yet.
    pub async fn scripted_faults(&self) -> Vec<ScriptedFault> {
        self.shared.script()
    }

    /// Empties the scripted fault queue.
    pub async fn clear_scripted_faults(&self) {
        self.shared.clear_script();
    }

    /// Jumps the simulated clock `secs` ahead and moves every batch along.
    pub async fn advance(&self, secs: f64) {
        self.shared.advance(secs);
    }

    /// Changes the clock's speed (0 stops it).
    pub async fn set_time_scale(&self, scale: f64) -> anyhow::Result<()> {
        self.shared
            .set_time_scale(scale)
            .map_err(|e| anyhow::anyhow!(e))
    }

    /// Requests per route and batches per status: the cheap part of [`SimHandle::stats`].
    pub async fn counts(&self) -> Counts {
        self.shared.counts()
    }

    /// Ends the current stage of some batches now (see [`Step`]).
    pub async fn step(&self, step: Step) -> anyhow::Result<Vec<Stepped>> {
        self.shared
            .step(step)
            .map_err(|e| anyhow::anyhow!("{}", e.message))
    }

    /// How often each batch was sent to a client, and its longest gap unseen.
    pub async fn observations(&self) -> Observations {
        self.shared.observations()
    }

    /// Starts counting observations afresh.
    pub async fn reset_observations(&self) {
        self.shared.reset_observations();
    }

    /// Makes a batch vanish (404 from now on); `false` when there is no such batch.
    pub async fn vanish(&self, batch_id: &str) -> bool {
        self.shared.vanish(batch_id)
    }

    /// Every file it holds (uploaded or generated, by any client), oldest first.
    pub async fn files(&self) -> Vec<HeldFile> {
        self.shared.files()
    }

    /// Accepts only `key` from now on; any non-empty key when `None`.
    pub async fn set_api_key(&self, key: Option<&str>) {
        self.shared.set_api_key(key.map(SecretString::from));
    }

    /// Accepts `key` as well as the keys accepted already (see `POST /admin/keys`).
    pub async fn add_api_key(&self, key: &str) {
        self.shared.add_api_key(SecretString::from(key));
    }

    /// Forgets every file, batch and count; faults return to the configured ones.
    pub async fn reset(&self) {
        self.shared.reset();
    }

    /// Stops accepting requests, gives open connections a moment, and stops; with a data dir of
    /// its own, it then saves its state there for the next start.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        if let Some(mut server) = self.server.take() {
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(joined) => joined
                    .context("the simulator's server task failed")?
                    .context("the simulator's server failed")?,
                Err(_) => server.abort(),
            }
        }
        if let Some(ticker) = self.ticker.take() {
            ticker.await.context("the simulator's ticker failed")?;
        }
        if self.persist {
            persist::save(&self.shared).await?;
        }
        Ok(())
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
