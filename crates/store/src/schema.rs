//! Checking a database's schema against the migrations a build embeds, by the same rules in
//! every backend: each backend reads what its database records and what its migrations make,
//! and these say what is wrong.

use std::collections::BTreeMap;

/// A migration this build embeds, as the check needs it.
#[derive(Debug, Clone, Copy)]
pub struct Embedded<'a> {
    pub version: i64,
    pub description: &'a str,
    pub checksum: &'a [u8],
}

/// The migrations of a backend on sqlx, as the check compares them.
#[cfg(feature = "sqlx")]
pub fn embedded(migrator: &sqlx::migrate::Migrator) -> Vec<Embedded<'_>> {
    migrator
        .iter()
        .map(|m| Embedded {
            version: m.version,
            description: &m.description,
            checksum: &m.checksum,
        })
        .collect()
}

/// A migration the database records: its version, checksum and whether it completed.
pub type Applied = (i64, Vec<u8>, bool);

/// Schema objects by (kind, name), with what defines them, written the same way on both
/// sides (a backend makes layout alone no difference before it compares).
pub type Objects = BTreeMap<(String, String), String>;

/// What is wrong with the `applied` migrations: one that did not complete, or one applied from
/// other text than the `embedded` one of its version (a checksum that differs). A migration
/// this build does not know (a newer one) is the schema version's concern, not this.
pub fn migration_problems(applied: &[Applied], embedded: &[Embedded<'_>]) -> Vec<String> {
    let mut problems = Vec::new();
    for (version, checksum, success) in applied {
        let Some(m) = embedded.iter().find(|m| m.version == *version) else {
            continue;
        };
        if !success {
            problems.push(format!(
                "migration {version} ({}) did not complete",
                m.description
            ));
        } else if m.checksum != checksum.as_slice() {
            problems.push(format!(
                "migration {version} ({}) was applied from other text than this batchwatch's",
                m.description
            ));
        }
    }
    problems
}

/// What of the `expected` objects is missing from `found`, or defined otherwise there.
/// Objects `found` has beyond them (a user's own index) are allowed.
pub fn object_problems(expected: &Objects, found: &Objects) -> Vec<String> {
    let mut problems = Vec::new();
    for (key @ (kind, name), definition) in expected {
        match found.get(key) {
            None => problems.push(format!("{kind} {name} is missing")),
            Some(have) if have != definition => problems.push(format!(
                "{kind} {name} differs from the one the migrations make"
            )),
            Some(_) => {}
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incomplete_or_changed_migration_is_named_and_an_unknown_one_left_to_the_version() {
        let embedded = [
            Embedded {
                version: 1,
                description: "initial",
                checksum: b"one",
            },
            Embedded {
                version: 2,
                description: "leases",
                checksum: b"two",
            },
        ];
        let applied = vec![
            (1, b"one".to_vec(), true),
            (2, b"TWO".to_vec(), true),
            (3, b"three".to_vec(), true),
        ];
        assert_eq!(
            migration_problems(&applied, &embedded),
            ["migration 2 (leases) was applied from other text than this batchwatch's"]
        );
        assert_eq!(
            migration_problems(&[(1, b"one".to_vec(), false)], &embedded),
            ["migration 1 (initial) did not complete"]
        );
    }

    #[test]
    fn a_missing_or_different_object_is_named_and_an_extra_one_allowed() {
        let objects = |items: &[(&str, &str, &str)]| -> Objects {
            items
                .iter()
                .map(|(k, n, d)| ((k.to_string(), n.to_string()), d.to_string()))
                .collect()
        };
        let expected = objects(&[("table", "jobs", "a"), ("view", "v", "b")]);
        let found = objects(&[("table", "jobs", "a"), ("index", "mine", "c")]);
        assert_eq!(object_problems(&expected, &found), ["view v is missing"]);
        let found = objects(&[("table", "jobs", "x"), ("view", "v", "b")]);
        assert_eq!(
            object_problems(&expected, &found),
            ["table jobs differs from the one the migrations make"]
        );
    }
}
