//! The Listener actor: accepts TCP connections and starts one Session actor per socket, spread
//! round-robin over the session Arbiters (one thread each). On a TLS listener the handshake
//! runs on the session's Arbiter too, so a slow one never holds up accepting.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use log::{debug, info, warn};
use tokio::net::{TcpListener, TcpStream};

use crate::admission::ConnectionSlot;
use crate::broker::Shared;
use crate::messages::StopAccepting;
use crate::session::{BoxedRead, BoxedWrite, Session};
use crate::tls::TlsAcceptor;

/// Pause after a failed accept (EMFILE, ENFILE, ENOBUFS...): retrying at once would spin, and
/// the condition usually clears when connections close.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

pub struct Listener {
    shared: Arc<Shared>,
    arbiters: Arc<[ArbiterHandle]>,
    next_arbiter: usize,
    /// Shared by all listeners so connection ids are unique in the broker.
    conn_ids: Arc<AtomicU64>,
    /// Set on a TLS listener.
    tls: Option<Arc<TlsAcceptor>>,
}

impl Listener {
    /// Starts accepting on `listener` (already bound, so the caller knows its address).
    pub fn start(
        listener: TcpListener,
        shared: Arc<Shared>,
        arbiters: Arc<[ArbiterHandle]>,
        conn_ids: Arc<AtomicU64>,
        tls: Option<Arc<TlsAcceptor>>,
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
            }
        })
    }

    fn spawn_session(&mut self, stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
        let slot = match ConnectionSlot::acquire(&self.shared, peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                // Closed before a byte is read: the protocol version, and so the CONNACK
                // format, is not known yet.
                warn!("{peer}: refused: {refusal}");
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
        let started = arbiter.spawn(async move {
            let stream = match TcpStream::from_std(std_stream) {
                Ok(stream) => stream,
                Err(e) => {
                    warn!("{peer}: cannot register the socket: {e}");
                    return;
                }
            };
            let (reader, writer, cert_username): (BoxedRead, BoxedWrite, _) = match tls {
                None => {
                    let (r, w) = stream.into_split();
                    (Box::new(r), Box::new(w), None)
                }
                // The slot is held through the handshake, which the connect timeout bounds.
                Some(tls) => match tls.accept(stream, shared.config.connect_timeout()).await {
                    Ok((stream, cert_username)) => {
                        let (r, w) = tokio::io::split(stream);
                        (Box::new(r), Box::new(w), cert_username)
                    }
                    Err(e) => {
                        info!("{peer}: {e}");
                        return;
                    }
                },
            };
            Session::new(reader, writer, peer, conn_id, slot, shared, cert_username).start();
        });
        if !started {
            warn!("{peer}: the session Arbiter has stopped; connection dropped");
        }
        Ok(())
    }
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
