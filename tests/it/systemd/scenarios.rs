//! What must hold when batchwatch runs under its unit.

use std::time::Duration;

use super::harness::{
    MEMBER, OUTSIDER, Payload, STATE_DIR, SystemdContainer, UNIT, invalid_config, seconds,
    unit_setting,
};

/// Only timing changes, so that the watchdog and restart tests take seconds, not a minute.
const FAST_WATCHDOG: &str = "[Service]\nWatchdogSec=3s\nRestartSec=1s\n";
const FAST_RESTART: &str = "[Service]\nRestartSec=1s\n";

/// It reaches READY under the full hardening; creates its queue tree and database with the
/// modes the group needs; reads its credential without ever logging it; a group member can
/// query the state and drop a file that the daemon claims; an outsider can do neither; the
/// service user backs the database up with `VACUUM INTO` while it runs.
pub async fn reaches_ready_and_owns_its_paths(payload: &Payload) {
    let Some(sys) = SystemdContainer::start(payload, None).await else {
        return;
    };
    let ready_after = match sys.start_unit().await {
        Ok(elapsed) => elapsed,
        Err(out) => panic!(
            "{UNIT} did not reach READY: {out}\n{}",
            sys.diagnostics().await
        ),
    };
    let state = sys.state().await;
    assert!(state.is_running(), "after READY: {state:?}");
    assert_eq!(state.n_restarts, 0, "restarted on its way up: {state:?}");
    println!(
        "container boot {:?}; systemctl start to READY {ready_after:?}; status {:?}",
        sys.boot_time, state.status_text
    );

    // The paths it needs, owned by the service and with the modes the group relies on.
    let listing = sys
        .check(&format!(
            "cd {STATE_DIR} && stat -c '%n %a %U:%G' . queue queue/incoming queue/processing \
             queue/done queue/failed queue/results state.db"
        ))
        .await;
    for expected in [
        ". 750 batchwatch:batchwatch",
        "queue 750 batchwatch:batchwatch",
        "queue/incoming 3770 batchwatch:batchwatch",
        "queue/processing 750 batchwatch:batchwatch",
        "queue/done 750 batchwatch:batchwatch",
        "queue/failed 750 batchwatch:batchwatch",
        "queue/results 750 batchwatch:batchwatch",
        "state.db 640 batchwatch:batchwatch",
    ] {
        assert!(
            listing.lines().any(|line| line == expected),
            "expected `{expected}` in:\n{listing}\n{}",
            sys.diagnostics().await
        );
    }

    // The hardened unit lets the daemon listen on loopback: its endpoint answers there.
    let readyz = sys
        .check(
            "bash -c 'exec 3<>/dev/tcp/127.0.0.1/9464 && \
             printf \"GET /readyz HTTP/1.0\\r\\n\\r\\n\" >&3 && cat <&3'",
        )
        .await;
    assert!(
        readyz.starts_with("HTTP/1.0 200") && readyz.ends_with("ready\n"),
        "GET /readyz in the unit: {readyz}\n{}",
        sys.diagnostics().await
    );

    // The live exposure, as systemd computes it for the loaded unit.
    let security = sys
        .sh(&format!("systemd-analyze security --no-pager {UNIT}"))
        .await;
    let exposure = security
        .stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for batchwatch.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse::<f64>().ok());
    println!("exposure of the running unit: {exposure:?}");
    assert!(
        exposure.is_some_and(|e| e <= 1.5),
        "exposure of the running unit above 1.5: {security}"
    );

    // A group member queries the state; an outsider cannot even read the database.
    let probe = sys.sh_as(MEMBER, &payload.status_probe).await;
    assert!(
        probe.success(),
        "{MEMBER} (group member) status probe: {probe}"
    );
    let outsider = sys
        .sh_as(
            OUTSIDER,
            &format!("sqlite3 -readonly {STATE_DIR}/state.db 'select 1'"),
        )
        .await;
    assert!(
        !outsider.success(),
        "{OUTSIDER} read the database: {outsider}"
    );

    // A group member drops a file that only the group may read; the daemon claims it, and
    // it stays byte for byte the same. An outsider cannot drop one.
    let content = "{\"custom_id\":\"a\"}\n";
    let dropped = sys
        .sh_as(
            MEMBER,
            &format!(
                "umask 027 && cd {STATE_DIR}/queue/incoming && \
                 printf '%s' '{content}' > .a.jsonl.part && mv .a.jsonl.part a.jsonl"
            ),
        )
        .await;
    assert!(
        dropped.success(),
        "{MEMBER} could not drop a file: {dropped}"
    );
    let mut found = String::new();
    for _ in 0..100 {
        let out = sys
            .sh(&format!(
                "cd {STATE_DIR}/queue && test ! -e incoming/a.jsonl && \
                 ls processing/a.jsonl done/a.jsonl failed/a.jsonl 2>/dev/null | head -n 1"
            ))
            .await;
        if out.success() && !out.stdout.trim().is_empty() {
            found = out.stdout.trim().to_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !found.is_empty(),
        "the dropped file was not claimed in 10s\n{}",
        sys.diagnostics().await
    );
    let bytes = sys.check(&format!("cat {STATE_DIR}/queue/{found}")).await;
    assert_eq!(bytes, content, "the claimed file changed");
    let outsider_drop = sys
        .sh_as(
            OUTSIDER,
            &format!("echo x > {STATE_DIR}/queue/incoming/b.jsonl"),
        )
        .await;
    assert!(!outsider_drop.success(), "{OUTSIDER} wrote into incoming/");

    // The README's backup, as the service user while the daemon runs: a consistent copy.
    let backup = sys
        .sh_as(
            "batchwatch",
            &format!(
                "sqlite3 {STATE_DIR}/state.db \"VACUUM INTO '/tmp/backup.db'\" && \
                 sqlite3 -readonly /tmp/backup.db 'pragma integrity_check' \
                 \"select name from sqlite_master where name = 'jobs'\""
            ),
        )
        .await;
    assert!(
        backup.success(),
        "VACUUM INTO as the service user: {backup}"
    );
    assert_eq!(
        backup.stdout, "ok\njobs\n",
        "the backup is not a whole, consistent database: {backup}"
    );

    // The key went in through the credential and nowhere else.
    let journal = sys.journal().await;
    assert!(
        !journal.contains(&payload.credential),
        "the API key appears in the journal"
    );
    let leaked = sys
        .sh(&format!(
            "grep -rl -- '{}' {STATE_DIR} /etc/batchwatch /run/systemd/system 2>/dev/null",
            payload.credential
        ))
        .await;
    assert!(
        leaked.stdout.trim().is_empty(),
        "the API key was written to: {}",
        leaked.stdout
    );
}

/// A main process that stops answering (SIGSTOP) is killed by the watchdog and restarted.
pub async fn watchdog_restarts_a_hung_daemon(payload: &Payload) {
    let Some(sys) = SystemdContainer::start(payload, Some(FAST_WATCHDOG)).await else {
        return;
    };
    if let Err(out) = sys.start_unit().await {
        panic!("{UNIT} did not start: {out}\n{}", sys.diagnostics().await);
    }
    let before = sys.state().await;
    assert!(before.is_running(), "{before:?}");
    // Longer than WatchdogSec: a daemon that pings keeps running.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pinging = sys.state().await;
    assert_eq!(
        (pinging.main_pid, pinging.n_restarts),
        (before.main_pid, 0),
        "a daemon that pings the watchdog was restarted\n{}",
        sys.diagnostics().await
    );

    let hung_at = std::time::Instant::now();
    sys.signal_main("SIGSTOP").await;
    let after = sys
        .wait_for("the watchdog restart", Duration::from_secs(30), |s| {
            s.n_restarts == 1 && s.is_running() && s.main_pid != before.main_pid
        })
        .await;
    println!(
        "hung at SIGSTOP, running again after {:?} (WatchdogSec=3s, RestartSec=1s): {after:?}",
        hung_at.elapsed()
    );
    let journal = sys.journal().await;
    assert!(
        journal.contains("Watchdog timeout"),
        "restarted, but not by the watchdog:\n{journal}"
    );
}

/// `systemctl stop` (SIGTERM) ends it within TimeoutStopSec with exit code 0, and a group
/// member can still read the database afterwards.
pub async fn sigterm_stops_it_cleanly(payload: &Payload) {
    let Some(sys) = SystemdContainer::start(payload, None).await else {
        return;
    };
    if let Err(out) = sys.start_unit().await {
        panic!("{UNIT} did not start: {out}\n{}", sys.diagnostics().await);
    }
    let took = sys.stop_unit().await;
    let state = sys.state().await;
    println!("systemctl stop took {took:?}: {state:?}");
    let bound = seconds(&unit_setting("TimeoutStopSec").expect("TimeoutStopSec= in the unit"));
    assert!(
        took < bound,
        "stopping took {took:?}, TimeoutStopSec is {bound:?}"
    );
    assert_eq!(
        (
            state.active_state.as_str(),
            state.result.as_str(),
            state.exec_main_code,
            state.exec_main_status
        ),
        ("inactive", "success", 1, 0),
        "not a clean exit 0 on SIGTERM (ExecMainCode 1 = exited, 2 = killed)\n{}",
        sys.diagnostics().await
    );
    let probe = sys.sh_as(MEMBER, &payload.status_probe).await;
    assert!(
        probe.success(),
        "{MEMBER} cannot query the state of a stopped service: {probe}"
    );
}

/// A configuration error ends it with 78 and systemd does not restart it.
pub async fn config_error_is_not_restarted(payload: &Payload) {
    let payload = Payload {
        config: invalid_config(),
        ..payload.clone()
    };
    let Some(sys) = SystemdContainer::start(&payload, Some(FAST_RESTART)).await else {
        return;
    };
    let started = sys.start_unit().await;
    assert!(started.is_err(), "started with an invalid configuration");
    // Several times RestartSec=1s: a restart would have happened by now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let state = sys.state().await;
    assert_eq!(
        (
            state.active_state.as_str(),
            state.result.as_str(),
            state.exec_main_code,
            state.exec_main_status,
            state.n_restarts
        ),
        ("failed", "exit-code", 1, 78, 0),
        "\n{}",
        sys.diagnostics().await
    );
}

/// The unit's LoadCredentialEncrypted= variant, set up as its comment says: the key
/// encrypted with `systemd-creds`, the plain file gone, a drop-in that swaps the lines.
pub async fn encrypted_credential_reaches_the_daemon(payload: &Payload) {
    let Some(sys) = SystemdContainer::start(payload, None).await else {
        return;
    };
    sys.check(
        "install -d -m 0700 /etc/credstore.encrypted && \
         systemd-creds encrypt --name=openai-api-key \
             /etc/credstore/batchwatch.openai-api-key \
             /etc/credstore.encrypted/batchwatch.openai-api-key && \
         rm /etc/credstore/batchwatch.openai-api-key && \
         mkdir -p /etc/systemd/system/batchwatch.service.d && \
         printf '[Service]\\nLoadCredential=\\nLoadCredentialEncrypted=%s\\n' \
             openai-api-key:/etc/credstore.encrypted/batchwatch.openai-api-key \
             > /etc/systemd/system/batchwatch.service.d/credential.conf && \
         systemctl daemon-reload",
    )
    .await;
    if let Err(out) = sys.start_unit().await {
        panic!(
            "{UNIT} did not start with the encrypted credential: {out}\n{}",
            sys.diagnostics().await
        );
    }
    assert!(sys.state().await.is_running());
    let journal = sys.journal().await;
    assert!(
        !journal.contains(&payload.credential),
        "the API key appears in the journal"
    );
}

/// `systemctl reload` (the unit's ExecReload=, SIGHUP) reads the configuration again without
/// a restart; an invalid file is refused and the daemon runs on.
pub async fn reload_rereads_the_configuration(payload: &Payload) {
    let Some(sys) = SystemdContainer::start(payload, None).await else {
        return;
    };
    if let Err(out) = sys.start_unit().await {
        panic!("{UNIT} did not start: {out}\n{}", sys.diagnostics().await);
    }
    let before = sys.state().await;
    sys.check(&format!(
        "printf '\\n[poll]\\nmax_interval = \"2m\"\\n' >> /etc/batchwatch/batchwatch.toml && \
         systemctl reload {UNIT}"
    ))
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !sys.journal().await.contains("configuration reloaded") {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload in the journal\n{}",
            sys.diagnostics().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        sys.journal().await.contains("poll.max_interval"),
        "{}",
        sys.diagnostics().await
    );
    sys.check(&format!(
        "printf '\\n[retention]\\ndone = \"soon\"\\n' >> /etc/batchwatch/batchwatch.toml && \
         systemctl reload {UNIT}"
    ))
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !sys.journal().await.contains("was not reloaded") {
        assert!(
            std::time::Instant::now() < deadline,
            "the invalid file was not refused\n{}",
            sys.diagnostics().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = sys.state().await;
    assert!(after.is_running(), "{after:?}\n{}", sys.diagnostics().await);
    assert_eq!(
        (after.main_pid, after.n_restarts),
        (before.main_pid, 0),
        "a reload is not a restart"
    );
}
