//! The faults: the standing settings (random shares of failures), a scripted queue of exact
//! faults, and which fault one request gets ([`FaultState::plan`]); `faults.rs` applies it.
//!
//! Per request, in order: a refused key set at run time ([`AuthFault`]) answers 401 or 403;
//! otherwise the first scripted entry that matches the request is used (and counted down);
//! otherwise the random shares are drawn from the seeded fault generator. Added latency is real
//! time, never scaled.

use std::collections::VecDeque;
use std::str::FromStr;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde::{Deserialize, Serialize};

/// How a 429 tells the client when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryAfter {
    /// No delay header at all.
    None,
    /// `Retry-After: N`, in seconds.
    Seconds(u64),
    /// `retry-after-ms: N`, in milliseconds.
    Millis(u64),
    /// `Retry-After: <HTTP date>`, N seconds after the response (real time).
    HttpDate(u64),
}

impl Default for RetryAfter {
    fn default() -> Self {
        RetryAfter::Seconds(1)
    }
}

impl FromStr for RetryAfter {
    type Err = String;

    /// `none`, `2` or `2s` (seconds), `1500ms`, or `date+3` (an HTTP date 3 s ahead).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let number = |n: &str| {
            n.trim().parse::<u64>().map_err(|_| {
                format!("{s:?} is not a Retry-After form: expected none, 2, 2s, 1500ms or date+3")
            })
        };
        if s == "none" {
            Ok(RetryAfter::None)
        } else if let Some(n) = s.strip_prefix("date+") {
            number(n).map(RetryAfter::HttpDate)
        } else if let Some(n) = s.strip_suffix("ms") {
            number(n).map(RetryAfter::Millis)
        } else {
            number(s.strip_suffix('s').unwrap_or(s)).map(RetryAfter::Seconds)
        }
    }
}

/// A key refusal switched on at run time, so a client can see its key refused, then accepted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthFault {
    /// Keys are checked as configured.
    #[default]
    None,
    /// Every request gets 401 `invalid_api_key`.
    Unauthorized,
    /// Every request gets 403.
    Forbidden,
}

/// The standing fault settings. Shares are probabilities in `0..=1`; the four error shares
/// (`rate_limit`, `quota`, `server_error`, `bad_gateway`) exclude each other and sum to at most 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Share of requests answered 429 `rate_limit_exceeded`.
    pub rate_limit: f64,
    /// The delay header those 429s carry.
    pub retry_after: RetryAfter,
    /// Share of requests answered 429 `insufficient_quota` (not transient).
    pub quota: f64,
    /// Share of requests answered 500 with a JSON error.
    pub server_error: f64,
    /// Share of requests answered 502 with an HTML body, as a proxy would.
    pub bad_gateway: f64,
    /// Real milliseconds added before every response.
    pub latency_ms: u64,
    /// Share of creates (`POST .../batches`, `POST .../files`) carried out, then answered by
    /// closing the connection without a response.
    pub drop_after_create: f64,
    /// Share of file content downloads cut off halfway.
    pub broken_download: f64,
    /// Share of new batches that stay in `finalizing` forever.
    pub stuck_finalizing: f64,
    /// Share of new batches that vanish (404 everywhere) `vanish_after_secs` after creation.
    pub vanish: f64,
    /// Simulated seconds from a vanishing batch's creation to its disappearance.
    pub vanish_after_secs: f64,
    /// Share of requests inside a batch that fail (into the error file).
    pub request_failure_rate: f64,
    /// When set, a batch whose validation would take its model's enqueued tokens (batches in
    /// `in_progress` or `finalizing`, estimated at one token per 4 bytes of input) over this
    /// many fails with `token_limit_exceeded`.
    pub token_limit: Option<u64>,
    /// A key refusal in force.
    pub auth: AuthFault,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            rate_limit: 0.0,
            retry_after: RetryAfter::default(),
            quota: 0.0,
            server_error: 0.0,
            bad_gateway: 0.0,
            latency_ms: 0,
            drop_after_create: 0.0,
            broken_download: 0.0,
            stuck_finalizing: 0.0,
            vanish: 0.0,
            vanish_after_secs: 60.0,
            request_failure_rate: 0.0,
            token_limit: None,
            auth: AuthFault::None,
        }
    }
}

impl Faults {
    /// Checks that every share is a probability and the error shares fit in one.
    pub fn validate(&self) -> Result<(), String> {
        let shares = [
            ("rate_limit", self.rate_limit),
            ("quota", self.quota),
            ("server_error", self.server_error),
            ("bad_gateway", self.bad_gateway),
            ("drop_after_create", self.drop_after_create),
            ("broken_download", self.broken_download),
            ("stuck_finalizing", self.stuck_finalizing),
            ("vanish", self.vanish),
            ("request_failure_rate", self.request_failure_rate),
        ];
        for (name, share) in shares {
            if !(0.0..=1.0).contains(&share) {
                return Err(format!("{name} must be between 0 and 1, not {share}"));
            }
        }
        let errors = self.rate_limit + self.quota + self.server_error + self.bad_gateway;
        if errors > 1.0 + 1e-9 {
            return Err(format!(
                "rate_limit + quota + server_error + bad_gateway must be at most 1, not {errors}"
            ));
        }
        if !(self.vanish_after_secs >= 0.0 && self.vanish_after_secs.is_finite()) {
            return Err("vanish_after_secs must be a non-negative number".into());
        }
        Ok(())
    }
}

/// One fault a request can get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// 429 `rate_limit_exceeded` with the given delay header.
    RateLimit {
        #[serde(default)]
        retry_after: RetryAfter,
    },
    /// 429 `insufficient_quota`.
    Quota,
    /// 500 with a JSON error body.
    ServerError,
    /// 502 with an HTML body.
    BadGateway,
    /// Any 4xx or 5xx status with a JSON error body, for the statuses no other kind covers
    /// (408, 409, 503, 504, ...).
    Status { status: ErrorStatus },
    /// 401 `invalid_api_key`.
    Unauthorized,
    /// 403.
    Forbidden,
    /// Waits this many real milliseconds, then serves the request normally.
    Latency { ms: u64 },
    /// Carries out the request at once, and answers this many real milliseconds later: a
    /// client that goes away meanwhile never learns the outcome.
    LateAnswer { ms: u64 },
    /// Closes the connection without carrying out the request.
    DropBefore,
    /// Carries out the request, then closes the connection without a response.
    DropAfter,
    /// Closes the connection without a response, and carries out the request this many real
    /// milliseconds later, as a request held up in front of the service would be: a client
    /// that looks for its outcome at once finds nothing yet.
    CarriedOutLate { ms: u64 },
    /// Serves the response but cuts its body off halfway (the declared length stays whole).
    BrokenDownload,
}

impl FaultKind {
    /// The name counted in the admin stats.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::RateLimit { .. } => "rate_limit",
            FaultKind::Quota => "quota",
            FaultKind::ServerError => "server_error",
            FaultKind::BadGateway => "bad_gateway",
            FaultKind::Status { .. } => "status",
            FaultKind::Unauthorized => "unauthorized",
            FaultKind::Forbidden => "forbidden",
            FaultKind::Latency { .. } => "latency",
            FaultKind::LateAnswer { .. } => "late_answer",
            FaultKind::DropBefore => "drop_before",
            FaultKind::DropAfter => "drop_after",
            FaultKind::CarriedOutLate { .. } => "carried_out_late",
            FaultKind::BrokenDownload => "broken_download",
        }
    }
}

/// An HTTP error status, 400 to 599, as a [`FaultKind::Status`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct ErrorStatus(StatusCode);

impl TryFrom<u16> for ErrorStatus {
    type Error = String;

    fn try_from(code: u16) -> Result<Self, String> {
        match StatusCode::from_u16(code) {
            Ok(status) if status.is_client_error() || status.is_server_error() => {
                Ok(ErrorStatus(status))
            }
            _ => Err(format!(
                "a status fault must be an error status from 400 to 599, not {code}"
            )),
        }
    }
}

impl ErrorStatus {
    pub(crate) fn status(self) -> StatusCode {
        self.0
    }
}

impl From<ErrorStatus> for u16 {
    fn from(status: ErrorStatus) -> u16 {
        status.0.as_u16()
    }
}

/// "The next `times` requests (matching `method` and `path`, when given) get `fault`."
///
/// `path` is compared with the route template (`/v1/batches/{batch_id}`) and with the
/// concrete path (`/v1/batches/batch_abc`); a trailing `*` matches any rest; an `/openai`
/// prefix is ignored on both sides, so one entry covers both API roots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptedFault {
    #[serde(flatten)]
    pub fault: FaultKind,
    #[serde(default = "one")]
    pub times: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

fn one() -> u32 {
    1
}

impl ScriptedFault {
    /// The next request, whatever it is, gets `fault`.
    pub fn new(fault: FaultKind) -> Self {
        ScriptedFault {
            fault,
            times: 1,
            method: None,
            path: None,
        }
    }

    /// Applies to the next `times` matching requests instead of one.
    pub fn times(mut self, times: u32) -> Self {
        self.times = times;
        self
    }

    /// Applies only to requests with this method and path (see the type's docs).
    pub fn on(mut self, method: &str, path: &str) -> Self {
        self.method = Some(method.to_owned());
        self.path = Some(path.to_owned());
        self
    }

    fn matches(&self, method: &Method, path: &str, template: &str) -> bool {
        if let Some(m) = &self.method
            && !m.eq_ignore_ascii_case(method.as_str())
        {
            return false;
        }
        let Some(pattern) = &self.path else {
            return true;
        };
        let pattern = without_azure_prefix(pattern);
        let candidates = [without_azure_prefix(path), without_azure_prefix(template)];
        match pattern.strip_suffix('*') {
            Some(prefix) => candidates.iter().any(|c| c.starts_with(prefix)),
            None => candidates.contains(&pattern),
        }
    }
}

fn without_azure_prefix(path: &str) -> &str {
    path.strip_prefix("/openai").unwrap_or(path)
}

/// The fault settings in force, the scripted queue, and the seeded generator they draw from.
#[derive(Debug)]
pub(crate) struct FaultState {
    pub(crate) faults: Faults,
    pub(crate) script: VecDeque<ScriptedFault>,
    rng: fastrand::Rng,
}

/// What the middleware does to one request (see `faults.rs`).
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) latency: Duration,
    pub(crate) fault: Option<FaultKind>,
}

impl FaultState {
    pub(crate) fn new(faults: Faults, seed: u64) -> Self {
        FaultState {
            faults,
            script: VecDeque::new(),
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// Decides the fate of one request.
    pub(crate) fn plan(&mut self, method: &Method, path: &str, template: &str) -> Plan {
        let mut plan = Plan {
            latency: Duration::from_millis(self.faults.latency_ms),
            fault: None,
        };
        match self.faults.auth {
            AuthFault::Unauthorized => plan.fault = Some(FaultKind::Unauthorized),
            AuthFault::Forbidden => plan.fault = Some(FaultKind::Forbidden),
            AuthFault::None => {}
        }
        if plan.fault.is_some() {
            return plan;
        }
        if let Some(pos) = self
            .script
            .iter()
            .position(|s| s.matches(method, path, template))
        {
            let entry = &mut self.script[pos];
            let fault = entry.fault.clone();
            entry.times = entry.times.saturating_sub(1);
            if entry.times == 0 {
                self.script.remove(pos);
            }
            match fault {
                FaultKind::Latency { ms } => plan.latency += Duration::from_millis(ms),
                other => plan.fault = Some(other),
            }
            return plan;
        }
        // Always three draws, so one request's route does not shift the next one's luck.
        let (error, drop, cut) = (self.rng.f64(), self.rng.f64(), self.rng.f64());
        let f = &self.faults;
        let errors = [
            (
                f.rate_limit,
                FaultKind::RateLimit {
                    retry_after: f.retry_after,
                },
            ),
            (f.quota, FaultKind::Quota),
            (f.server_error, FaultKind::ServerError),
            (f.bad_gateway, FaultKind::BadGateway),
        ];
        let mut edge = 0.0;
        for (share, fault) in errors {
            edge += share;
            if error < edge {
                plan.fault = Some(fault);
                return plan;
            }
        }
        let is_create = *method == Method::POST
            && (template.ends_with("/batches") || template.ends_with("/files"));
        if is_create && drop < f.drop_after_create {
            plan.fault = Some(FaultKind::DropAfter);
        } else if (template.ends_with("/content") || template.ends_with("/results"))
            && cut < f.broken_download
        {
            plan.fault = Some(FaultKind::BrokenDownload);
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms_parse() {
        assert_eq!("none".parse(), Ok(RetryAfter::None));
        assert_eq!("2".parse(), Ok(RetryAfter::Seconds(2)));
        assert_eq!("2s".parse(), Ok(RetryAfter::Seconds(2)));
        assert_eq!("1500ms".parse(), Ok(RetryAfter::Millis(1500)));
        assert_eq!("date+3".parse(), Ok(RetryAfter::HttpDate(3)));
        assert!("soon".parse::<RetryAfter>().is_err());
    }

    #[test]
    fn scripted_entries_match_method_and_path_and_count_down() {
        let mut state = FaultState::new(Faults::default(), 7);
        state.script.push_back(
            ScriptedFault::new(FaultKind::ServerError)
                .times(2)
                .on("post", "/v1/batches"),
        );
        let get = state.plan(&Method::GET, "/v1/batches", "/v1/batches");
        assert_eq!(get.fault, None);
        for _ in 0..2 {
            let post = state.plan(&Method::POST, "/openai/v1/batches", "/openai/v1/batches");
            assert_eq!(post.fault, Some(FaultKind::ServerError));
        }
        assert!(state.script.is_empty());
        assert_eq!(
            state
                .plan(&Method::POST, "/v1/batches", "/v1/batches")
                .fault,
            None
        );
    }

    #[test]
    fn a_path_pattern_matches_the_template_the_concrete_path_or_a_prefix() {
        let fault = |path: &str| ScriptedFault::new(FaultKind::Quota).on("GET", path);
        let (p, t) = ("/v1/batches/batch_1", "/v1/batches/{batch_id}");
        assert!(fault("/v1/batches/{batch_id}").matches(&Method::GET, p, t));
        assert!(fault("/v1/batches/batch_1").matches(&Method::GET, p, t));
        assert!(fault("/v1/batches*").matches(&Method::GET, p, t));
        assert!(!fault("/v1/files*").matches(&Method::GET, p, t));
    }

    #[test]
    fn error_shares_must_fit_in_one() {
        let faults = Faults {
            rate_limit: 0.6,
            server_error: 0.6,
            ..Faults::default()
        };
        assert!(faults.validate().is_err());
        let faults = Faults {
            vanish: 1.5,
            ..Faults::default()
        };
        assert!(faults.validate().unwrap_err().contains("vanish"));
        assert!(Faults::default().validate().is_ok());
    }

    #[test]
    fn scripted_faults_serialise_with_a_kind_tag() {
        let entry: ScriptedFault = serde_json::from_str(
            r#"{"kind":"rate_limit","retry_after":{"millis":1500},"times":2,"path":"/v1/files"}"#,
        )
        .unwrap();
        assert_eq!(
            entry.fault,
            FaultKind::RateLimit {
                retry_after: RetryAfter::Millis(1500)
            }
        );
        assert_eq!(entry.times, 2);
        let plain: ScriptedFault = serde_json::from_str(r#"{"kind":"drop_after"}"#).unwrap();
        assert_eq!(plain, ScriptedFault::new(FaultKind::DropAfter));
        let status: ScriptedFault =
            serde_json::from_str(r#"{"kind":"status","status":503}"#).unwrap();
        assert_eq!(
            serde_json::to_value(&status).unwrap(),
            serde_json::json!({"kind": "status", "status": 503, "times": 1})
        );
        for bad in [200, 302, 600, 1000] {
            let err = serde_json::from_str::<ScriptedFault>(&format!(
                r#"{{"kind":"status","status":{bad}}}"#
            ))
            .unwrap_err()
            .to_string();
            assert!(
                err.contains(&format!("error status from 400 to 599, not {bad}")),
                "{err}"
            );
        }
    }
}
