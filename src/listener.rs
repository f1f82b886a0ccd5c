//! The Listener actor: accepts TCP connections and starts one Session actor per socket, spread
//! round-robin over the session Arbiters (one thread each). On a TLS or WebSocket listener the
//! handshakes run on the session's Arbiter too, so a slow one never holds up accepting.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use actix::prelude::*;
use log::{debug, info, warn};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};

use crate::admission::ConnectionSlot;
use crate::broker::Shared;
use crate::messages::StopAccepting;
use crate::session::{BoxedRead, BoxedWrite, Session, TcpOut};
use crate::stats::Counters;
use crate::tls::{self, TlsAcceptor};
use crate::websocket::{self, WebSocketAcceptor};

/// Pause after a failed accept (EMFILE, ENFILE, ENOBUFS...): retrying at once would spin, and
/// the condition usually clears when connections close.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// At most one warning per this long for connections refused at accept (the rest are counted
/// in `connections_refused` and logged at debug level).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

pub struct Listener {
    shared: Arc<Shared>,
    arbiters: Arc<[ArbiterHandle]>,
    next_arbiter: usize,
    /// Shared by all listeners so connection ids are unique in the broker.
    conn_ids: Arc<AtomicU64>,
    /// Set on a TLS listener.
    tls: Option<Arc<TlsAcceptor>>,
    /// Set on a WebSocket listener (after TLS on a wss one).
    websocket: Option<Arc<WebSocketAcceptor>>,
    /// When a refusal at accept was last logged as a warning.
    last_refusal_log: Option<Instant>,
}

/// Why a connection ended before it became a session.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error(transparent)]
    Tls(#[from] tls::HandshakeError),
    #[error(transparent)]
    WebSocket(#[from] websocket::UpgradeError),
}

impl Listener {
    /// Starts accepting on `listener` (already bound, so the caller knows its address).
    pub fn start(
        listener: TcpListener,
        shared: Arc<Shared>,
        arbiters: Arc<[ArbiterHandle]>,
        conn_ids: Arc<AtomicU64>,
        tls: Option<Arc<TlsAcceptor>>,
        websocket: Option<Arc<WebSocketAcceptor>>,
    ) -> Addr<Listener> {
        Listener::create(move |ctx| {
            // Unlike `while let Ok(..) = accept()`, an accept error is yielded as an item and
            // the stream goes on, so one EMFILE does not stop the broker accepting for good.
            ctx.add_stream(futures_util::stream::unfold(listener, |l| async move {
                let accepted = l.accept().await;
                if accepted.is_err() {
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
                Some((accepted, l))
            }));
            Listener {
                shared,
                arbiters,
                next_arbiter: 0,
                conn_ids,
                tls,
                websocket,
                last_refusal_log: None,
            }
        })
    }

    fn spawn_session(&mut self, stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
        let slot = match ConnectionSlot::acquire(&self.shared, peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                // Closed before a byte is read: the protocol version, and so the CONNACK
                // format, is not known yet. A storm of refusals must not become a storm of
                // log lines: one warning per `REFUSAL_LOG_EVERY`, the rest counted.
                Counters::add(&self.shared.counters.connections_refused);
                debug!("{peer}: refused: {refusal}");
                if self
                    .last_refusal_log
                    .is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY)
                {
                    self.last_refusal_log = Some(Instant::now());
                    let total = Counters::get(&self.shared.counters.connections_refused);
                    warn!("{peer}: refused: {refusal} ({total} refused since start)");
                }
                return Ok(());
            }
        };
        stream.set_nodelay(true)?;
        // Hand the socket over as a std socket so that it registers with the reactor of the
        // Arbiter it will live on (a tokio socket must not move between runtimes).
        let std_stream = stream.into_std()?;
        let conn_id = self.conn_ids.fetch_add(1, Ordering::Relaxed);
        let arbiter = &self.arbiters[self.next_arbiter % self.arbiters.len()];
        self.next_arbiter = self.next_arbiter.wrapping_add(1);
        let shared = self.shared.clone();
        let tls = self.tls.clone();
        let websocket = self.websocket.clone();
        let started = arbiter.spawn(async move {
            let stream = match TcpStream::from_std(std_stream) {
                Ok(stream) => stream,
                Err(e) => {
                    warn!("{peer}: cannot register the socket: {e}");
                    return;
                }
            };
            // The slot is held through the handshakes, which the connect timeout bounds. Their
            // future is boxed, and only made on a TLS or WebSocket listener: inline, its states
            // made the future handed to the Arbiter 10 KB, copied for every connection.
            let opened = if tls.is_none() && websocket.is_none() {
                Ok(plain(stream))
            } else {
                let timeout = shared.config.connect_timeout();
                Box::pin(handshake(
                    stream,
                    tls.as_deref(),
                    websocket.as_deref(),
                    timeout,
                ))
                .await
            };
            let (reader, writer, cert_username, socket) = match opened {
                Ok(opened) => opened,
                Err(e) => {
                    info!("{peer}: {e}");
                    return;
                }
            };
            Session::new(
                reader,
                writer,
                peer,
                conn_id,
                slot,
                shared,
                cert_username,
                socket,
            )
            .start();
        });
        if !started {
            warn!("{peer}: the session Arbiter has stopped; connection dropped");
        }
        Ok(())
    }
}

/// The two halves of the MQTT byte stream, the client certificate's username, and the
/// writing half of a plain TCP connection for the session's bypass.
type Opened = (
    BoxedRead,
    BoxedWrite,
    Option<String>,
    Option<Weak<OwnedWriteHalf>>,
);

/// A plain TCP connection's halves. Owned halves: no lock between reading and writing.
fn plain(stream: TcpStream) -> Opened {
    let (r, w) = stream.into_split();
    let w = Arc::new(w);
    let socket = Arc::downgrade(&w);
    (Box::new(r), Box::new(TcpOut(w)), None, Some(socket))
}

/// Runs the listener's handshakes, TLS then the WebSocket upgrade, together within `timeout`.
async fn handshake(
    stream: TcpStream,
    tls: Option<&TlsAcceptor>,
    websocket: Option<&WebSocketAcceptor>,
    timeout: Duration,
) -> Result<Opened, HandshakeError> {
    let started = tokio::time::Instant::now();
    let remaining = || timeout.saturating_sub(started.elapsed());
    Ok(match (tls, websocket) {
        (None, None) => plain(stream),
        (None, Some(websocket)) => {
            let (r, w) = websocket.accept(stream, timeout).await?;
            (r, w, None, None)
        }
        (Some(tls), websocket) => {
            let (stream, cert_username) = tls.accept(stream, timeout).await?;
            let (r, w): (BoxedRead, BoxedWrite) = match websocket {
                None => {
                    let (r, w) = tokio::io::split(stream);
                    (Box::new(r), Box::new(w))
                }
                Some(websocket) => websocket.accept(stream, remaining()).await?,
            };
            (r, w, cert_username, None)
        }
    })
}

impl Actor for Listener {
    type Context = Context<Self>;
}

impl StreamHandler<io::Result<(TcpStream, SocketAddr)>> for Listener {
    fn handle(&mut self, item: io::Result<(TcpStream, SocketAddr)>, _: &mut Context<Self>) {
        match item {
            Ok((stream, peer)) => {
                debug!("{peer}: accepted");
                if let Err(e) = self.spawn_session(stream, peer) {
                    warn!("{peer}: could not start a session: {e}");
                }
            }
            Err(e) => warn!("accept failed (retrying): {e}"),
        }
    }
}

impl Handler<StopAccepting> for Listener {
    type Result = ();

    fn handle(&mut self, _: StopAccepting, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
