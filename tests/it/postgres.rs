//! The database in PostgreSQL (`database.url`): the commands read and write it as they do
//! SQLite's, and its password comes from `PGPASSWORD` or a systemd credential, never from the
//! URL, and shows nowhere. (The store suite runs against it in `store_model`, the daemon's
//! crash points in `daemon_crash::on_postgres`, a whole fleet in `daemon_lifecycle`.)

use std::time::Duration;

use batchwatch::config::DatabaseLocation;
use batchwatch::store::prelude::*;
use batchwatch::store::{Access, Store};

use crate::support::daemon::{Backend, Env, quick_sim, requests};
use crate::support::postgres::{self, PASSWORD};
use crate::support::process::{command, output_within, stdout_ok};
use crate::support::sim::spawn_sim;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_show_history_and_migrate_read_the_postgres_database_the_daemon_wrote() {
    let sim = spawn_sim(quick_sim()).await;
    let Some(env) = Env::on(Backend::Postgres, &sim.handle.base_url(), "").await else {
        return;
    };
    let url = env.postgres.clone().expect("a PostgreSQL database");
    let mut daemon = env.spawn();
    for i in 0..3 {
        let content = requests(&format!("pg{i}"), 2 + i, "gpt-4o-mini");
        env.drop_file(&format!("pg-{i}.jsonl"), content.as_bytes());
    }
    let jobs = env
        .wait_finished(3, Duration::from_secs(60), &mut daemon)
        .await;
    assert!(
        daemon
            .seen
            .iter()
            .any(|l| l.contains("batchwatch started") && l.contains(&url)),
        "the start names the database"
    );
    env.stop(daemon);

    let config = Some(env.config.as_path());
    let status = stdout_ok(config, &["status"]);
    assert!(status.starts_with("Jobs: 3 completed\n"), "{status}");
    for i in 0..3 {
        assert!(status.contains(&format!("pg-{i}.jsonl")), "{status}");
    }
    // The same from the URL alone, as a second host would ask.
    let by_url = stdout_ok(None, &["status", "--json", "--database", &url]);
    let listed: serde_json::Value = serde_json::from_str(&by_url).expect("JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{by_url}");

    let job = &jobs[0];
    let show = stdout_ok(config, &["show", &job.id]);
    assert!(
        show.contains(&job.file_name) && show.contains("completed"),
        "{show}"
    );
    let store = env.store().await;
    let remote = store.submissions_of(&job.id).await.unwrap()[0]
        .remote_id
        .clone()
        .expect("a batch");
    store.close().await;
    let history = stdout_ok(config, &["history", &remote]);
    assert!(
        history.contains("in_progress") || history.contains("validating"),
        "{history}"
    );
    assert!(history.contains("completed"), "{history}");

    let migrated = stdout_ok(config, &["migrate"]);
    assert_eq!(
        migrated,
        format!("database {url} is at schema version 1\n"),
        "{migrated}"
    );
}

#[tokio::test]
async fn the_password_comes_from_pgpassword_or_a_credential_and_shows_nowhere() {
    let Some(url) = postgres::database_of_password_role().await else {
        return;
    };
    let env = Env::new(
        "http://127.0.0.1:9/v1",
        &format!("[database]\nurl = {url:?}\n"),
    );
    let migrate = |vars: &[(&str, &str)]| {
        let mut cmd = command(Some(&env.config));
        cmd.arg("migrate");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        output_within(&mut cmd, Duration::from_secs(60))
    };
    let shows_nothing = |out: &std::process::Output, what: &str| {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains(PASSWORD),
            "{what}: the password shows:\n{text}"
        );
        text
    };

    // No password anywhere: refused by the server, the database named.
    let out = migrate(&[]);
    let text = shows_nothing(&out, "without a password");
    assert!(!out.status.success(), "{text}");
    assert!(text.contains(&url), "the error names the database:\n{text}");

    // A wrong one: refused, and the wrong one is not shown either.
    let out = migrate(&[("PGPASSWORD", "not-the-password-0451")]);
    let text = shows_nothing(&out, "a wrong password");
    assert!(!out.status.success(), "{text}");
    assert!(!text.contains("not-the-password-0451"), "{text}");

    // From the environment, as any PostgreSQL client takes it.
    let out = migrate(&[("PGPASSWORD", PASSWORD)]);
    let text = shows_nothing(&out, "PGPASSWORD");
    assert!(out.status.success(), "{text}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("database {url} is at schema version 1\n")
    );

    // From a systemd credential.
    let credentials = env.sandbox.path().join("credentials");
    std::fs::create_dir_all(&credentials).unwrap();
    std::fs::write(credentials.join("db-password"), format!("{PASSWORD}\n")).unwrap();
    let with_credential = Env::new(
        "http://127.0.0.1:9/v1",
        &format!("[database]\nurl = {url:?}\npassword_credential = \"db-password\"\n"),
    );
    let mut cmd = command(Some(&with_credential.config));
    cmd.args(["status"])
        .env("CREDENTIALS_DIRECTORY", &credentials);
    let out = output_within(&mut cmd, Duration::from_secs(60));
    let text = shows_nothing(&out, "a credential");
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("No jobs yet."), "{text}");

    // In the URL: refused before anything is opened, the key and the rule named.
    let inline = url.replace("bw_password@", &format!("bw_password:{PASSWORD}@"));
    let in_url = Env::new(
        "http://127.0.0.1:9/v1",
        &format!("[database]\nurl = {inline:?}\n"),
    );
    let mut cmd = command(Some(&in_url.config));
    cmd.arg("migrate");
    let out = output_within(&mut cmd, Duration::from_secs(60));
    let text = shows_nothing(&out, "a password in the URL");
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(
        text.contains("database.url") && text.contains("must not hold the password"),
        "{text}"
    );

    // Nor in a store's Debug, nor in an error's.
    let store = batchwatch_store_postgres::Store::open(
        &url,
        Some(PASSWORD),
        Duration::from_secs(5),
        Access::ReadOnly,
    )
    .await
    .expect("opened with the password");
    let shown = format!("{:?}", Store::Postgres(store));
    assert!(!shown.contains(PASSWORD), "{shown}");
    let wrong = url.replace("bw_password@", "bw_password:wrong-0451@");
    let refused = Store::open_at(
        &DatabaseLocation::Postgres(wrong),
        None,
        Duration::from_secs(5),
        Access::ReadOnly,
    )
    .await
    .expect_err("the server refuses a wrong password");
    let shown = format!("{refused:?} {refused}");
    assert!(!shown.contains("wrong-0451"), "{shown}");
}
