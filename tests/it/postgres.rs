//! The database in PostgreSQL (`database.url`): the commands read and write it as they do
//! SQLite's, and its password comes from `PGPASSWORD` or a systemd credential, never from the
//! URL, and shows nowhere; leases fence the writers that share it. (The store suite runs
//! against it in `store_model`, with a writer that holds nothing trying every step; the
//! daemon's crash points in `daemon_crash::on_postgres`; a whole fleet in `daemon_lifecycle`.)

use std::time::Duration;

use batchwatch::config::DatabaseLocation;
use batchwatch::model::{JobState, SubmissionState};
use batchwatch::store::jobs::NewJob;
use batchwatch::store::ops::intake::{Part, Validated};
use batchwatch::store::ops::lease::Instance;
use batchwatch::store::prelude::*;
use batchwatch::store::{Access, Lease, Store, StoreError};

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
    // The daemon is an instance with a live lease, and wrote every job under it.
    let store = env.store().await;
    let instances = store.instances().await.unwrap();
    assert!(instances.len() == 1 && instances[0].live, "{instances:?}");
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let held: Vec<Option<i64>> = sqlx::query_scalar("SELECT owner_epoch FROM jobs")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(held, vec![Some(instances[0].epoch); 3]);
    let listed = stdout_ok(Some(env.config.as_path()), &["status", "--instances"]);
    let line = listed.lines().nth(1).unwrap_or_default();
    assert!(
        listed.starts_with("EPOCH") && line.contains(&instances[0].name) && line.contains("live"),
        "{listed}"
    );
    env.stop(daemon);
    assert!(
        store.instances().await.unwrap().is_empty(),
        "a clean stop ends the lease"
    );
    assert_eq!(
        stdout_ok(Some(env.config.as_path()), &["status", "--instances"]),
        "No daemon holds a lease on this database.\n"
    );
    store.close().await;
    let _ = conn.close().await;

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
        format!(
            "database {url} is at schema version {}\n",
            batchwatch_store_postgres::known_schema_version()
        ),
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
        format!(
            "database {url} is at schema version {}\n",
            batchwatch_store_postgres::known_schema_version()
        )
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

/// An instance registered as `name` with a lease of `ttl`.
async fn register(store: &Store, name: &str, ttl: Duration) -> Lease {
    let who = Instance {
        name: name.to_owned(),
        host: "test".to_owned(),
        pid: std::process::id(),
        pid_namespace: "test pid:[1]".to_owned(),
    };
    store.register(&who, ttl, NOW).await.expect("register")
}

const NOW: &str = "2026-12-07T10:00:00.000Z";

/// A fresh database of the test server, opened as a daemon opens it (None, after saying why,
/// when there is no server).
async fn fresh_store() -> Option<Store> {
    let location = DatabaseLocation::Postgres(postgres::database().await?);
    let store = Store::open_at(&location, None, Duration::from_secs(5), Access::Migrate).await;
    Some(store.expect("open"))
}

/// A job claimed from `path`, of ten bytes, due in a day.
fn new_job<'a>(id: &'a str, path: &'a str) -> NewJob<'a> {
    NewJob {
        id,
        file_name: "f.jsonl",
        path,
        size_bytes: 10,
        endpoint: None,
        completion_window: "24h",
        deadline_at: "2026-12-08T10:00:00.000Z",
        metadata: "{}",
        output_expires_after: None,
        provider: "openai",
    }
}

#[tokio::test]
async fn a_lease_that_ran_out_moves_nothing_and_its_jobs_are_taken_over_under_a_greater_epoch() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let a = register(&store, "a", Duration::from_secs(1)).await;
    let b = register(&store, "b", Duration::from_secs(600)).await;
    assert!(b.epoch() > a.epoch());

    // A claims a job: A holds it, and B may not move it.
    let job = new_job("job_leased", "processing/job_leased/f.jsonl");
    store.claim(&a, &job, None, None, NOW).await.expect("claim");
    let parts = [Part {
        start: 0,
        end: 10,
        requests: 1,
    }];
    let sha = "ab".repeat(32);
    let valid = Validated {
        sha256: &sha,
        requests: 1,
        endpoint: "/v1/chat/completions",
        model: "gpt-4o-mini",
        parts: &parts,
        queued: "valid",
        cancelling: "valid; cancelling",
    };
    let refused = store.record_valid(&b, "job_leased", &valid, NOW).await;
    assert!(
        matches!(refused, Err(StoreError::NotHeld(_))),
        "{refused:?}"
    );
    let state = |store: &Store| {
        let store = store.clone();
        async move { store.job("job_leased").await.unwrap().unwrap().state }
    };
    assert_eq!(state(&store).await, JobState::Validating, "nothing moved");
    let held: Vec<(i64, i64)> = store
        .instances()
        .await
        .unwrap()
        .iter()
        .map(|i| (i.epoch, i.jobs))
        .collect();
    assert_eq!(held, [(a.epoch(), 1), (b.epoch(), 0)]);
    store
        .record_valid(&a, "job_leased", &valid, NOW)
        .await
        .expect("the holder moves it");
    assert_eq!(state(&store).await, JobState::Queued);
    let row = store.submissions_of("job_leased").await.unwrap().remove(0);

    // A's lease runs out: its next write is refused, before any row is touched.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refused = store.start_upload(&a, &row, NOW).await;
    assert!(
        matches!(&refused, Err(StoreError::NotHeld(m)) if m.contains("ran out")),
        "{refused:?}"
    );
    assert_eq!(
        store.submission(row.id).await.unwrap().unwrap().state,
        SubmissionState::Queued
    );

    // B reaps A and takes the job, and the job's events say so; A has lost its lease.
    let taken = store.take_over(&b, 100, NOW).await.expect("take over");
    assert_eq!(taken, ["job_leased"]);
    let events = store.job_events("job_leased").await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message == format!("taken over by b (lease epoch {})", b.epoch())),
        "{events:?}"
    );
    let lost = store.renew(&a, Duration::from_secs(600), NOW).await;
    assert!(
        matches!(lost, Err(StoreError::LeaseLost { epoch }) if epoch == a.epoch()),
        "{lost:?}"
    );
    store
        .start_upload(&b, &row, NOW)
        .await
        .expect("B holds it now");
    assert_eq!(
        store.submission(row.id).await.unwrap().unwrap().state,
        SubmissionState::Uploading
    );

    // A starts again as a new instance: a greater epoch, and still nothing of B's to move,
    // until B stops cleanly and A takes the job.
    let a2 = register(&store, "a", Duration::from_secs(600)).await;
    assert!(a2.epoch() > b.epoch());
    let fresh = store.submission(row.id).await.unwrap().unwrap();
    let refused = store
        .start_create(&a2, &fresh, "file-1", "cancelled", NOW)
        .await;
    assert!(
        matches!(refused, Err(StoreError::NotHeld(_))),
        "{refused:?}"
    );
    assert!(store.take_over(&a2, 100, NOW).await.unwrap().is_empty());
    store.resign(&b).await.unwrap();
    assert_eq!(
        store.take_over(&a2, 100, NOW).await.unwrap(),
        ["job_leased"]
    );
    store
        .start_create(&a2, &fresh, "file-1", "cancelled", NOW)
        .await
        .expect("A holds it again");

    // An operator's cancel takes no lease, and is not fenced.
    let (asked, _) = store
        .request_cancel("job_leased", "operator", |_| "asked".to_owned(), NOW)
        .await
        .unwrap();
    assert!(asked);
    store.close().await;
}

/// One leader at a time, elected through its row: a term is renewed by its holder, passes to
/// another instance only once it ran out, never to an instance whose lease ran out; and a
/// write as leader on a job another instance holds goes through while, and only while, the
/// writer's term runs.
#[tokio::test]
async fn one_leader_at_a_time_whose_writes_on_others_jobs_pass_only_while_its_term_runs() {
    let Some(store) = fresh_store().await else {
        return;
    };
    let term = Duration::from_millis(800);
    let a = register(&store, "a", Duration::from_secs(600)).await;
    let b = register(&store, "b", Duration::from_secs(600)).await;
    assert!(
        store.elect(&a, term).await.unwrap(),
        "nobody led: a is elected"
    );
    assert!(!store.elect(&b, term).await.unwrap(), "a's term runs");
    assert!(store.elect(&a, term).await.unwrap(), "a renews its term");
    let leaders = |store: &Store| {
        let store = store.clone();
        async move {
            let rows = store.instances().await.unwrap();
            rows.iter()
                .filter(|i| i.leader)
                .map(|i| i.name.clone())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(leaders(&store).await, ["a"]);

    // A holds a job; B, not leading, may not write on it, even as leader.
    let job = new_job("job_led", "processing/job_led/f.jsonl");
    store.claim(&a, &job, None, None, NOW).await.expect("claim");
    for lease in [b, b.as_leader()] {
        let refused = store.note(&lease, "job_led", "seen by b", NOW).await;
        assert!(
            matches!(refused, Err(StoreError::NotHeld(_))),
            "{refused:?}"
        );
    }

    // A's term runs out unrenewed: B is elected, and its writes as leader pass; A's as
    // leader pass only on the job it holds itself.
    tokio::time::sleep(term + Duration::from_millis(200)).await;
    assert!(store.elect(&b, term).await.unwrap(), "a's term ran out");
    assert!(!store.elect(&a, term).await.unwrap(), "b's term runs");
    assert_eq!(leaders(&store).await, ["b"]);
    store
        .note(&b.as_leader(), "job_led", "seen by the leader", NOW)
        .await
        .expect("the leader writes on a job it does not hold");
    let refused = store
        .note(&b, "job_led", "seen by b, not as leader", NOW)
        .await;
    assert!(
        matches!(refused, Err(StoreError::NotHeld(_))),
        "{refused:?}"
    );
    store
        .note(&a.as_leader(), "job_led", "seen by its holder", NOW)
        .await
        .expect("the holder writes on its job, leading or not");

    // B's term runs out in turn: its writes as leader are refused from then on.
    tokio::time::sleep(term + Duration::from_millis(200)).await;
    let refused = store.note(&b.as_leader(), "job_led", "late", NOW).await;
    assert!(
        matches!(refused, Err(StoreError::NotHeld(_))),
        "{refused:?}"
    );
    let events: Vec<String> = store
        .job_events("job_led")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert!(
        events.contains(&"seen by the leader".to_owned()),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e.starts_with("seen by b") || e == "late"),
        "{events:?}"
    );

    // An instance whose lease ran out is not elected, even with nobody leading.
    let c = register(&store, "c", Duration::from_millis(300)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!store.elect(&c, term).await.unwrap(), "c's lease ran out");
    // A clean stop ends the term at once.
    assert!(store.elect(&a, term).await.unwrap());
    store.resign(&a).await.unwrap();
    assert!(
        store.elect(&b, term).await.unwrap(),
        "a resigned: b is elected at once"
    );
    store.close().await;
}

#[tokio::test]
async fn tls_to_the_server_is_verified_against_the_ca_the_url_names() {
    let Some(url) = postgres::database().await else {
        return;
    };
    let ca = postgres::server()
        .expect("a server")
        .ca()
        .display()
        .to_string();
    let open = async |url: String| {
        Store::open_at(
            &DatabaseLocation::Postgres(url),
            None,
            Duration::from_secs(5),
            Access::Migrate,
        )
        .await
    };

    // Verified against the server's CA, name included: the connection is TLS.
    let verified = format!("{url}?sslmode=verify-full&sslrootcert={ca}");
    open(verified.clone())
        .await
        .expect("verified")
        .close()
        .await;
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&verified).await.unwrap();
    let tls: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(tls, "the connection is TLS");
    let _ = conn.close().await;

    // A server whose certificate another CA signed is refused, naming the database.
    let stranger = tempfile::tempdir().unwrap();
    let other_ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let other = stranger.path().join("other-ca.crt");
    std::fs::write(&other, other_ca.cert.pem()).unwrap();
    let refused = open(format!(
        "{url}?sslmode=verify-ca&sslrootcert={}",
        other.display()
    ))
    .await
    .expect_err("a certificate from another CA");
    let shown = batchwatch::telemetry::chain(&refused);
    assert!(shown.contains(&url), "{shown}");
    assert!(shown.to_lowercase().contains("certificate"), "{shown}");
}
