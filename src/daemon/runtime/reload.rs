//! Live reload: SIGHUP (`systemctl reload batchwatch`) reads the configuration again.
//!
//! ```text
//!   running ──SIGHUP──▶ RELOADING=1 ──file invalid, key or a secret unreadable──▶ refused:
//!                           │                     one error line, the old configuration stays
//!                           ▼
//!               restart-only keys changed? one warning naming them; they keep their values
//!                           │
//!                           ▼
//!               applied: settings, timers, API client (key, limits, timeouts), [[notify]]
//!               entries (secrets read again), log level;
//!               logged: the keys that changed, and "the API key" when the key read differs
//!                           │
//!                        READY=1
//! ```
//!
//! What changes live: everything read when it is used, from the settings in [`Ctx`] (poll bounds,
//! limits, deadlines, metadata and expiries of jobs claimed from now on, back-offs, retention,
//! clean-up, collect, alerts), every timer of [`crate::daemon::schedule`] (derived again), the API
//! client (built again with the key read again from its source: tasks already in flight finish with
//! the old one), the `[[notify]]` entries (their secrets read again), and `log.level`. A shorter
//! `poll.max_interval` brings every poll planned later than that forward. What cannot change without a restart ([`RESTART_ONLY`]) keeps its old value.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::api::{ApiKey, Client};
use crate::clock;
use crate::config::{ConfigError, Settings};
use crate::store::prelude::*;
use crate::telemetry::Logging;

use crate::daemon::Daemon;
use crate::daemon::ctx::Ctx;
use crate::daemon::notifiers::Notifiers;
use crate::daemon::schedule::Schedule;

/// Keys that only a restart changes: the queue tree and the database are locked and open,
/// the instance is registered under its name and lease, the endpoint listens and its models
/// are chosen, the log format is installed.
pub const RESTART_ONLY: [&str; 13] = [
    "queue.dir",
    "queue.watch",
    "database.path",
    "database.url",
    "database.password_credential",
    "database.busy_timeout",
    "database.lease",
    "daemon.name",
    "metrics.listen",
    "metrics.max_models",
    "metrics.pages",
    "metrics.pages_token_file",
    "log.format",
];

/// What `changed` names when the API key read from its source is not the key in use: the key
/// itself, which no setting holds (a key file rotated in place, say), never its value.
pub const KEY_CHANGE: &str = "the API key";

/// What a reload will do: the settings to run on, the keys that change (and [`KEY_CHANGE`]),
/// and the restart-only keys that changed in the file but keep their values.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub settings: Settings,
    pub changed: Vec<String>,
    pub kept: Vec<String>,
}

/// Every key of `settings` with its value, flattened (`poll.max_interval`).
fn flatten(settings: &Settings) -> BTreeMap<String, toml::Value> {
    fn walk(prefix: &str, value: toml::Value, out: &mut BTreeMap<String, toml::Value>) {
        match value {
            toml::Value::Table(table) => {
                for (k, v) in table {
                    let key = if prefix.is_empty() {
                        k
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_owned(), other);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        "",
        toml::Value::try_from(settings).expect("settings always serialise"),
        &mut out,
    );
    out
}

/// Decides what a reload from `old` to `new` does.
pub fn plan(old: &Settings, mut new: Settings) -> Plan {
    let (before, after) = (flatten(old), flatten(&new));
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    let differs: Vec<String> = keys
        .into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .cloned()
        .collect();
    let (kept, changed): (Vec<String>, Vec<String>) = differs
        .into_iter()
        .partition(|k| RESTART_ONLY.contains(&k.as_str()));
    new.queue.dir = old.queue.dir.clone();
    new.queue.watch = old.queue.watch;
    new.database = old.database.clone();
    new.daemon.name = old.daemon.name.clone();
    new.metrics = old.metrics.clone();
    new.log.format = old.log.format;
    Plan {
        settings: new,
        changed,
        kept,
    }
}

impl Daemon {
    /// Reads the configuration again (`file`, as at start) and applies it, telling systemd
    /// `RELOADING=1` before and `READY=1` after. A configuration that cannot be used is
    /// refused whole and the daemon runs on as it was.
    pub async fn reload(&mut self, file: Option<&Path>, log: &Logging) {
        self.notifier.reloading();
        let loaded = Settings::load(file).and_then(|settings| self.apply(settings, log));
        match loaded {
            Ok(plan) => {
                self.after_reload(&plan).await;
                self.ctx.metrics.reloaded("applied");
                if !plan.kept.is_empty() {
                    tracing::warn!(
                        keys = plan.kept.join(", "),
                        "the configuration changed keys that take effect only at a restart; they keep their values until then"
                    );
                }
                tracing::info!(
                    changed = if plan.changed.is_empty() {
                        "nothing".to_owned()
                    } else {
                        plan.changed.join(", ")
                    },
                    "configuration reloaded"
                );
            }
            Err(e) => {
                self.ctx.metrics.reloaded("refused");
                tracing::error!(error = %e, "the configuration was not reloaded; running on with the previous one");
            }
        }
        // New settings may make work due that was not: the next round goes through it all.
        self.quiet_until = None;
        self.notifier.reloaded();
    }

    /// Applies `settings`: everything is built before anything is replaced, so a failure
    /// leaves the daemon as it was.
    pub fn apply(&mut self, settings: Settings, log: &Logging) -> Result<Plan, ConfigError> {
        let mut plan = plan(&self.ctx.settings, settings);
        let s = &plan.settings;
        let key = ApiKey::load(&s.api.key_source())?;
        let key_changed = !self.ctx.client.uses_key(&key);
        let client = Client::observed(
            &s.api,
            &s.limits,
            key,
            std::sync::Arc::new(self.ctx.metrics.clone()),
        )?;
        if let Err(e) = log.set_level(&s.log.level) {
            return Err(ConfigError::key("log.level", e));
        }
        let notify = Arc::new(Notifiers::load(s)?);
        let schedule = Schedule::new(s);
        self.scanner.set_settle(schedule.settle);
        if key_changed {
            plan.changed.push(KEY_CHANGE.to_owned());
        }
        if let Some(endpoint) = &self.endpoint {
            endpoint.reserve_for(&s.limits);
        }
        self.ctx = Ctx {
            settings: Arc::new(plan.settings.clone()),
            schedule: Arc::new(schedule),
            client,
            notify,
            ..self.ctx.clone()
        };
        Ok(plan)
    }

    /// What follows an applied reload: polls planned beyond a shortened `poll.max_interval`
    /// come forward, and a paused gate probes the (maybe new) key at once.
    async fn after_reload(&mut self, plan: &Plan) {
        let now = self.ctx.clock.now();
        if plan.changed.iter().any(|k| k == "poll.max_interval") {
            let latest = clock::add(now, self.ctx.settings.poll.max_interval.get());
            self.ctx.polls.bring_forward(latest);
            let latest = clock::format(latest);
            let moved = self.ctx.store.poll_by(&self.ctx.lease, &latest).await;
            if let Err(e) = moved {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "polls planned beyond the new poll.max_interval could not be brought forward; they come at their old times"
                );
            }
        }
        self.ctx.gate.probe_now(now);
        self.timers.scan.arm(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &str) -> Settings {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, extra).unwrap();
        Settings::load_from(Some(&path), []).unwrap()
    }

    #[test]
    fn a_reload_changes_what_can_change_and_keeps_the_restart_only_keys() {
        let old = settings("[poll]\nmax_interval = \"60s\"\n");
        let new = settings(
            "[poll]\nmax_interval = \"10s\"\n[queue]\ndir = \"/elsewhere\"\n\
             [metrics]\nlisten = \"\"\nmax_models = 3\n[retention]\ndone = \"7d\"\n\
             [database]\nurl = \"postgres://db/bw\"\nlease = \"5m\"\n[daemon]\nname = \"w\"\n",
        );
        let plan = plan(&old, new);
        assert_eq!(plan.changed, ["poll.max_interval", "retention.done"]);
        assert_eq!(
            plan.kept,
            [
                "daemon.name",
                "database.lease",
                "database.url",
                "metrics.listen",
                "metrics.max_models",
                "queue.dir"
            ]
        );
        assert_eq!(plan.settings.queue.dir, old.queue.dir);
        assert_eq!(plan.settings.database, old.database);
        assert_eq!(plan.settings.daemon.name, None);
        assert_eq!(plan.settings.metrics, old.metrics);
        assert_eq!(plan.settings.poll.max_interval.get().as_secs(), 10);
    }

    #[test]
    fn an_unchanged_file_changes_nothing() {
        let old = settings("");
        let plan = plan(&old, old.clone());
        assert!(plan.changed.is_empty() && plan.kept.is_empty());
        assert_eq!(plan.settings, old);
    }
}
