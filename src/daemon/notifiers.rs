//! The `[[notify]]` entries the daemon runs with: each one's settings and signing secret,
//! read at start and at each reload (a reload swaps them whole, so a delivery under way
//! finishes with what it started with), and what posts to their URLs. What is told, when,
//! and how often is [`crate::daemon::housekeeping::notifications`]'s.

use crate::api::webhook::{Poster, WebhookSecret};
use crate::config::{ConfigError, NotifyOn, NotifyTarget, Settings};

/// One `[[notify]]` entry, its secret read.
#[derive(Debug, Clone)]
pub struct Target {
    pub settings: NotifyTarget,
    pub secret: Option<WebhookSecret>,
}

/// The `[[notify]]` entries, their secrets read, and what posts to their URLs.
#[derive(Debug, Clone)]
pub struct Notifiers {
    targets: Vec<Target>,
    pub poster: Poster,
}

impl Notifiers {
    /// Reads every entry's secret; an entry that cannot be used refuses the whole
    /// configuration (at start, or at a reload, which then keeps the old one).
    pub fn load(settings: &Settings) -> Result<Notifiers, ConfigError> {
        let mut targets = Vec::new();
        for entry in &settings.notify {
            let secret = match entry.secret_source() {
                Some((key, source)) => Some(WebhookSecret::load(&key, &source)?),
                None => None,
            };
            targets.push(Target {
                settings: entry.clone(),
                secret,
            });
        }
        let https = targets.iter().any(|t| {
            t.settings
                .url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://"))
        });
        Ok(Notifiers {
            targets,
            poster: Poster::new(https)?,
        })
    }

    /// Reads every entry's secret as [`Notifiers::load`] does, but for a systemd credential
    /// asked for outside its service, where it does not exist (`check-config` by hand).
    pub fn check_secrets(settings: &Settings) -> Result<(), ConfigError> {
        for entry in &settings.notify {
            if let Some((key, source)) = entry.secret_source()
                && !crate::api::outside_its_service(&source)
            {
                WebhookSecret::load(&key, &source)?;
            }
        }
        Ok(())
    }

    /// Whether any entry wants `on`.
    pub fn want(&self, on: NotifyOn) -> bool {
        self.wanting(on).next().is_some()
    }

    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.settings.name == name)
    }

    /// The entries that want `on`.
    pub fn wanting(&self, on: NotifyOn) -> impl Iterator<Item = &Target> {
        self.targets.iter().filter(move |t| t.settings.wants(on))
    }
}
