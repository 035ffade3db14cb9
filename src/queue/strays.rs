//! What incoming/ holds besides request files: names the scan skips, and what the operator is
//! told about them.
//!
//! Only `NAME.jsonl` is a request file and is claimed (README: "you drop NAME.jsonl here").
//! Temporary names (starting with `.`, ending in `.part` or `.tmp`) are a writer's business
//! and skipped in silence. `NAME.jsonl.toml` is the sidecar of `NAME.jsonl`: it moves with its
//! file. Anything else (`notes.txt`, `README.md`, a directory) is a stray: it is left where it
//! is, and logged once, the first time it is seen. A sidecar whose file is not beside it for
//! [`LONELY_SIDECAR_AFTER`] (it came after its file was claimed, or its file never came) is
//! left too, and warned about once. An entry that goes away and comes back is new again.
//!
//! ```text
//! seen ──first look──▶ stray: told at once
//! sidecar ──its file beside it──▶ (moves with its file)
//!    │
//!    └──alone for LONELY_SIDECAR_AFTER──▶ told; left in incoming/
//! ```

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use crate::clock::{self, Timestamp};

use super::SIDECAR_SUFFIX;

/// The suffix of a request file, the one kind of name that is claimed.
pub const REQUEST_SUFFIX: &str = ".jsonl";

/// How long a sidecar may wait for its file before it is warned about: long enough for a
/// writer that writes the sidecar first, then the file.
pub const LONELY_SIDECAR_AFTER: Duration = Duration::from_secs(60);

/// What a name in incoming/ is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// `NAME.jsonl`: claimed once it held still.
    Request,
    /// Being written: `.NAME`, `NAME.part`, `NAME.tmp`.
    Temporary,
    /// `NAME.jsonl.toml`, the options of `NAME.jsonl`.
    Sidecar,
    /// Anything else: never claimed.
    Stray,
}

/// Sorts a name of incoming/.
pub fn entry(name: &OsStr) -> Entry {
    let b = name.as_bytes();
    if b.starts_with(b".") || b.ends_with(b".part") || b.ends_with(b".tmp") {
        Entry::Temporary
    } else if b.ends_with(REQUEST_SUFFIX.as_bytes()) {
        Entry::Request
    } else if b
        .strip_suffix(SIDECAR_SUFFIX.as_bytes())
        .is_some_and(|file| file.ends_with(REQUEST_SUFFIX.as_bytes()))
    {
        Entry::Sidecar
    } else {
        Entry::Stray
    }
}

/// Something to tell the operator about an entry left in incoming/.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Not a request file.
    Stray(OsString),
    /// A sidecar whose file has not been beside it for this long.
    LonelySidecar(OsString, Duration),
}

/// Remembers what was told, so that each entry is told about once.
#[derive(Debug, Default)]
pub struct Strays {
    told: HashSet<OsString>,
    /// Sidecars without their file: since when, as first seen so.
    lonely: HashMap<OsString, Timestamp>,
}

impl Strays {
    /// Takes the names of one listing of incoming/ at `now`; returns what to tell now.
    pub fn observe(&mut self, names: &[OsString], now: Timestamp) -> Vec<Notice> {
        let present: HashSet<&OsStr> = names.iter().map(OsString::as_os_str).collect();
        let mut notices = Vec::new();
        let mut lonely = HashMap::new();
        for name in names {
            match entry(name) {
                Entry::Stray if !self.told.contains(name) => {
                    notices.push(Notice::Stray(name.clone()));
                }
                Entry::Sidecar => {
                    let file = &name.as_bytes()[..name.len() - SIDECAR_SUFFIX.len()];
                    if present.contains(OsStr::from_bytes(file)) {
                        continue;
                    }
                    let since = self.lonely.get(name).copied().unwrap_or(now);
                    lonely.insert(name.clone(), since);
                    let alone = clock::between(since, now);
                    if alone >= LONELY_SIDECAR_AFTER && !self.told.contains(name) {
                        notices.push(Notice::LonelySidecar(name.clone(), alone));
                    }
                }
                _ => {}
            }
        }
        self.lonely = lonely;
        self.told.retain(|name| present.contains(name.as_os_str()));
        self.told
            .extend(notices.iter().map(|n| n.name().to_os_string()));
        notices.sort_by(|a, b| a.name().cmp(b.name()));
        notices
    }
}

impl Notice {
    /// The entry it is about.
    pub fn name(&self) -> &OsStr {
        match self {
            Notice::Stray(name) | Notice::LonelySidecar(name, _) => name,
        }
    }

    /// Logs it, as one warning naming the entry and the rule.
    pub fn log(&self) {
        match self {
            Notice::Stray(name) => tracing::warn!(
                file = %name.to_string_lossy(),
                "not a request file: only NAME.jsonl files are claimed (with an optional NAME.jsonl.toml); it is left in incoming/"
            ),
            Notice::LonelySidecar(name, alone) => tracing::warn!(
                file = %name.to_string_lossy(),
                alone = %clock::humanize(*alone),
                "a sidecar without its file: the file it configures has not been in incoming/ for this long (a sidecar applies to its file only when it is there before the file is claimed); it is left in incoming/ for a file of that name"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn names_sort_into_requests_sidecars_temporaries_and_strays() {
        for (name, expected) in [
            ("a.jsonl", Entry::Request),
            ("a.jsonl.toml", Entry::Sidecar),
            (".a.jsonl", Entry::Temporary),
            ("a.jsonl.part", Entry::Temporary),
            ("b.tmp", Entry::Temporary),
            ("notes.txt", Entry::Stray),
            ("README.md", Entry::Stray),
            ("data.json", Entry::Stray),
            ("settings.toml", Entry::Stray),
            ("a.JSONL", Entry::Stray),
        ] {
            assert_eq!(entry(OsStr::new(name)), expected, "{name}");
        }
        assert_eq!(
            entry(OsStr::from_bytes(b"latin1-\xe9t\xe9.jsonl")),
            Entry::Request,
            "claimed, to be rejected with its reason"
        );
    }

    #[test]
    fn a_stray_is_told_once_and_again_only_after_it_went_away() {
        let mut strays = Strays::default();
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let at = |s| clock::add(t0, Duration::from_secs(s));
        let listing = names(&["notes.txt", "a.jsonl", ".a.part"]);
        assert_eq!(
            strays.observe(&listing, t0),
            vec![Notice::Stray("notes.txt".into())]
        );
        assert!(strays.observe(&listing, at(5)).is_empty());
        assert!(strays.observe(&names(&["a.jsonl"]), at(10)).is_empty());
        assert_eq!(
            strays.observe(&listing, at(15)),
            vec![Notice::Stray("notes.txt".into())]
        );
    }

    #[test]
    fn a_sidecar_alone_for_a_minute_is_told_once_and_one_with_its_file_never() {
        let mut strays = Strays::default();
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let at = |s| clock::add(t0, Duration::from_secs(s));
        let listing = names(&["late.jsonl.toml", "paired.jsonl.toml", "paired.jsonl"]);
        assert!(strays.observe(&listing, t0).is_empty());
        assert!(strays.observe(&listing, at(59)).is_empty());
        assert_eq!(
            strays.observe(&listing, at(60)),
            vec![Notice::LonelySidecar(
                "late.jsonl.toml".into(),
                Duration::from_secs(60)
            )]
        );
        assert!(strays.observe(&listing, at(120)).is_empty());
        // Its file arrives, and is claimed with it: nothing more is said.
        assert!(
            strays
                .observe(&names(&["late.jsonl.toml", "late.jsonl"]), at(130))
                .is_empty()
        );
        // A sidecar whose file came and went starts its minute again.
        assert!(
            strays
                .observe(&names(&["paired.jsonl.toml"]), at(200))
                .is_empty()
        );
        assert_eq!(
            strays.observe(&names(&["paired.jsonl.toml"]), at(260)),
            vec![Notice::LonelySidecar(
                "paired.jsonl.toml".into(),
                Duration::from_secs(60)
            )]
        );
    }
}
