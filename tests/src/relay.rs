//! A TCP relay between one NATS client (a worker, a scheduler) and the test
//! server, that breaks one exchange on purpose: the faults a reconnect or a
//! timeout cause at the worst moment, made exact.
//!
//! The relay is armed once. The first bytes the client sends while it is
//! armed and that hold the needle (a subject, a job id, an event type) set the
//! fault off, on that connection only; the client's next connections are
//! relayed untouched, as async-nats reconnects.

use crate::nats_url;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the relay does to the exchange that holds the needle.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// The request reaches the server; nothing the server sends back on that
    /// connection reaches the client, and once the server has acknowledged a
    /// publish the connection is closed: the publish is stored, its
    /// acknowledgement lost.
    LoseTheAnswer,
    /// The request never reaches the server: the connection is closed first.
    Cut,
}

pub struct NatsRelay {
    /// Where the client connects instead of the server.
    pub url: String,
    armed: Arc<AtomicBool>,
    fired: Arc<AtomicBool>,
}

impl NatsRelay {
    /// A relay to the test server, armed at once or not (see [`NatsRelay::arm`]).
    pub async fn start(needle: impl Into<Vec<u8>>, fault: Fault, armed: bool) -> Self {
        let upstream = nats_url().trim_start_matches("nats://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("nats://{}", listener.local_addr().unwrap());
        let (armed, fired) = (Arc::new(AtomicBool::new(armed)), Arc::new(AtomicBool::new(false)));
        let needle: Arc<[u8]> = needle.into().into();
        let (a, f) = (armed.clone(), fired.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else { continue };
                tokio::spawn(relay(client, server, needle.clone(), fault, a.clone(), f.clone()));
            }
        });
        NatsRelay { url, armed, fired }
    }

    /// From now on, the next exchange holding the needle is broken.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Whether the fault happened: for [`Fault::LoseTheAnswer`], an
    /// acknowledgement was swallowed; for [`Fault::Cut`], a request was cut.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    needle: Arc<[u8]>,
    fault: Fault,
    armed: Arc<AtomicBool>,
    fired: Arc<AtomicBool>,
) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    // This connection's exchange was the one: the server's answers are lost.
    let cut = AtomicBool::new(false);
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        // The end of the previous read: a needle may straddle two reads.
        let mut carry: Vec<u8> = Vec::new();
        loop {
            let n = match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            carry.extend_from_slice(&buf[..n]);
            // Decided before the bytes go on, so no answer to them can pass.
            if carry.windows(needle.len()).any(|w| *w == *needle) && armed.swap(false, Ordering::SeqCst) {
                match fault {
                    Fault::Cut => {
                        fired.store(true, Ordering::SeqCst);
                        return;
                    }
                    Fault::LoseTheAnswer => cut.store(true, Ordering::SeqCst),
                }
            }
            carry.drain(..carry.len().saturating_sub(needle.len()));
            if to_server.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_server.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if cut.load(Ordering::SeqCst) {
                // Swallowed; closed once it held a publish acknowledgement.
                if buf[..n].windows(10).any(|w| w == b"{\"stream\":") {
                    fired.store(true, Ordering::SeqCst);
                    return;
                }
                continue;
            }
            if to_client.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Either side ending ends both: the halves drop, the sockets close.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}
