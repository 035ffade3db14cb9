//! A stand-in for systemd's notify socket.

use std::time::{Duration, Instant};

/// Collects the datagrams a service sends to its notify socket.
pub fn notify_socket(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::sync::mpsc::Receiver<String>) {
    let path = dir.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            if tx
                .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    (path, rx)
}

pub fn wait_message(
    rx: &std::sync::mpsc::Receiver<String>,
    what: impl Fn(&str) -> bool,
    within: Duration,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(m) if what(&m) => return m,
            Ok(_) => {}
            Err(_) => panic!("no such notify message within {within:?}"),
        }
    }
}
