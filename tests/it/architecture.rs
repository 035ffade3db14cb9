//! The map README's "Architecture" draws, checked against the source: which crate may speak
//! SQL or HTTP or name the service's objects, and which of the daemon's activities may import
//! which. Comments are not code: only the lines that are not comments are read.

use std::path::{Path, PathBuf};

/// The repository's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, relative to the root, with its lines that are not comments.
fn sources(dir: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut pending = vec![root().join(dir)];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .map(str::to_owned)
                    .collect();
                let name = path.strip_prefix(root()).unwrap().display().to_string();
                out.push((name, code));
            }
        }
    }
    out.sort();
    out
}

/// The places in the sources under `dirs` whose code names `word` (as a whole word), except in
/// the files `allowed`.
fn naming(dirs: &[&str], word: &str, allowed: &[&str]) -> Vec<String> {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut found = Vec::new();
    for dir in dirs {
        for (file, code) in sources(dir) {
            if allowed.iter().any(|a| Path::new(&file) == Path::new(a)) {
                continue;
            }
            for (n, line) in code.iter().enumerate() {
                let whole = line.match_indices(word).any(|(i, _)| {
                    let before = line[..i].chars().next_back();
                    let after = line[i + word.len()..].chars().next();
                    !before.is_some_and(is_word) && !after.is_some_and(is_word)
                });
                if whole {
                    found.push(format!("{file} (code line {}): {}", n + 1, line.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn only_the_store_backends_speak_sql_and_only_the_provider_and_the_simulator_speak_http() {
    // The port turns a sqlx error into its own and reads a sqlx backend's migrations for the
    // schema check (behind its `sqlx` feature), and names no other; the operations both
    // backends share (crates/store/shared) name none either.
    let sql = naming(
        &[
            "src",
            "crates/store/src",
            "crates/store/shared",
            "crates/provider/src",
            "crates/sim/src",
        ],
        "sqlx",
        &["crates/store/src/error.rs", "crates/store/src/schema.rs"],
    );
    assert!(sql.is_empty(), "sqlx outside the store backends:\n{sql:#?}");
    // The binary reaches a backend only through the store port's enum.
    for backend in ["batchwatch_store_sqlite", "batchwatch_store_postgres"] {
        let named = naming(&["src"], backend, &["src/store.rs"]);
        assert!(
            named.is_empty(),
            "{backend} named outside src/store.rs:\n{named:#?}"
        );
    }
    let http = naming(
        &[
            "src",
            "crates/core/src",
            "crates/store/src",
            "crates/store/shared",
            "crates/store-sqlite/src",
            "crates/store-postgres/src",
        ],
        "reqwest",
        &[],
    );
    assert!(http.is_empty(), "reqwest outside the provider:\n{http:#?}");
}

#[test]
fn the_services_object_fields_and_tags_are_named_only_by_the_provider() {
    // The two formats of batchwatch's own that kept OpenAI's names (README, "Architecture"):
    // the manifest's keys, and the store's columns, which it maps in its SQL.
    let outside = ["src", "crates/core/src"];
    let manifest = ["src/queue/manifest.rs"];
    for word in [
        "input_file_id",
        "output_file_id",
        "error_file_id",
        "batchwatch_job_id",
        "batchwatch_part",
        "batchwatch_attempt",
        "batchwatch_sha256",
        "batch_output",
    ] {
        let found = naming(&outside, word, &manifest);
        assert!(found.is_empty(), "{word} outside the provider:\n{found:#?}");
    }
    // A Files route is the provider's too.
    let routes: Vec<String> = naming(&outside, "files", &[])
        .into_iter()
        .filter(|l| l.contains("\"/files") || l.contains("\"files\""))
        .collect();
    assert!(
        routes.is_empty(),
        "a Files route outside the provider:\n{routes:#?}"
    );
}

/// The daemon's modules below every activity, each importing only those before it.
const SHARED: [&str; 6] = ["shared", "schedule", "gate", "notifiers", "ctx", "file"];

/// The daemon's activities, in the order README and `daemon/mod.rs` give.
const ACTIVITIES: [&str; 7] = [
    "housekeeping",
    "track",
    "intake",
    "submit",
    "cancel",
    "finish",
    "runtime",
];

#[test]
fn each_activity_of_the_daemon_imports_only_the_shared_modules_and_the_activities_before_it_and_each_shared_module_only_those_before_it()
 {
    let rank = |module: &str| ACTIVITIES.iter().position(|a| *a == module);
    let mut wrong = Vec::new();
    for (file, code) in sources("src/daemon") {
        let inside = file
            .strip_prefix("src/daemon/")
            .unwrap()
            .split(['/', '.'])
            .next()
            .unwrap()
            .to_owned();
        if inside == "mod" {
            continue; // the engine, above them all
        }
        let own = rank(&inside);
        assert!(
            own.is_some() || SHARED.contains(&inside.as_str()),
            "{file} is in neither an activity nor a shared module: add it to the map"
        );
        for line in &code {
            for (i, _) in line.match_indices("crate::daemon::") {
                let rest = &line[i + "crate::daemon::".len()..];
                // `crate::daemon::{a, b::c}` names each of a group on one line; a group spread
                // over several lines reads as naming nothing, and is reported.
                let group = rest
                    .strip_prefix('{')
                    .map(|g| g.split('}').next().unwrap_or(g));
                let names: Vec<String> = group
                    .map_or(vec![rest], |g| g.split(',').collect())
                    .into_iter()
                    .map(|n| {
                        n.trim()
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect()
                    })
                    .collect();
                for named in names {
                    check(&mut wrong, &file, &inside, own, &named, line);
                }
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the map:\n{wrong:#?}");
}

/// Records in `wrong` an import of `daemon::named` by `file` (in the module `inside`, of rank
/// `own` among the activities) that the map does not allow.
fn check(
    wrong: &mut Vec<String>,
    file: &str,
    inside: &str,
    own: Option<usize>,
    named: &str,
    line: &str,
) {
    let rank = |module: &str| ACTIVITIES.iter().position(|a| *a == module);
    if named == inside || SHARED.contains(&named) && own.is_some() {
        return;
    }
    // An item of the engine itself (`daemon::Daemon`): only the runtime, which reloads the
    // running engine's configuration, reaches it.
    if named.starts_with(char::is_uppercase) {
        if inside != "runtime" {
            wrong.push(format!("{file} reaches the engine: {}", line.trim()));
        }
        return;
    }
    let allowed = match (own, rank(named)) {
        (Some(own), Some(theirs)) => theirs < own,
        // A shared module imports only the shared modules before it.
        (None, None) => {
            let shared = |module: &str| SHARED.iter().position(|s| *s == module);
            shared(named).is_some_and(|theirs| shared(inside).is_some_and(|own| theirs < own))
        }
        _ => false,
    };
    if !allowed {
        wrong.push(format!("{file} imports daemon::{named}: {}", line.trim()));
    }
}
