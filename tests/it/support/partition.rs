//! A TCP relay on 127.0.0.1 that a test can cut, as a network partition cuts a host off: while
//! cut, no byte goes either way (connections stay open and new ones are accepted, but nothing
//! answers), and once mended, what waited flows on. A daemon reaches its database through one to
//! be cut off from it alone.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Partition {
    /// Where the relay listens.
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Partition {
    /// A relay to `target`, not cut.
    pub async fn to(target: SocketAddr) -> Partition {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let addr = listener.local_addr().expect("the relay's address");
        let (cut, cut_rx) = watch::channel(false);
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let cut = cut_rx.clone();
                tokio::spawn(relay(client, target, cut));
            }
        });
        Partition {
            addr,
            cut,
            accepting,
        }
    }

    /// Cuts the relay: nothing passes until [`Partition::mend`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn mend(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Carries one connection to `target`, holding every byte while the relay is cut.
async fn relay(client: TcpStream, target: SocketAddr, mut cut: watch::Receiver<bool>) {
    if cut.wait_for(|cut| !cut).await.is_err() {
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        () = pump(client_read, server_write, cut.clone()) => {}
        () = pump(server_read, client_write, cut) => {}
    }
}

/// Copies `from` to `to`, each chunk only once the relay is not cut.
async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    mut cut: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if cut.wait_for(|cut| !cut).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
