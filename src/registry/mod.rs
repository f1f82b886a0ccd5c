//! The Registry actor: which connection currently owns each client identifier.
//!
//! It is the single authority for take-over [MQTT-3.1.4-3]: a new connection registers first
//! and the old one is told to close, so two live connections never share an id.

pub mod retained;
pub mod subscriptions;

use std::collections::HashMap;

use actix::prelude::*;
use log::{debug, info};
use tokio::sync::oneshot;

use crate::messages::{ActiveClients, Close, Register, Shutdown, Unregister};
use crate::mqtt::ReasonCode;

struct Entry {
    conn_id: u64,
    session: Recipient<Close>,
}

/// Holds the active clients by client identifier.
#[derive(Default)]
pub struct Registry {
    clients: HashMap<String, Entry>,
    /// Replies owed to `Shutdown` callers, sent when the last client has unregistered.
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    shutting_down: bool,
}

impl Actor for Registry {
    type Context = Context<Self>;
}

impl Registry {
    fn notify_if_drained(&mut self) {
        if self.shutting_down && self.clients.is_empty() {
            for waiter in self.shutdown_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}

impl Handler<Register> for Registry {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Register, _: &mut Context<Self>) -> Self::Result {
        if self.shutting_down {
            // Accepted just before the listener stopped: close it like everyone else.
            let session = msg.session;
            return Box::pin(async move {
                let _ = session
                    .send(Close {
                        reason: ReasonCode::ServerShuttingDown,
                    })
                    .await;
            });
        }
        let new = Entry {
            conn_id: msg.conn_id,
            session: msg.session,
        };
        match self.clients.insert(msg.client_id.clone(), new) {
            Some(old) => {
                info!(
                    "client {:?}: taken over by connection {}",
                    msg.client_id, msg.conn_id
                );
                // Control messages are one per take-over, so `send` (which waits for mailbox
                // room) cannot pile up; the new session waits until the old one is closing.
                Box::pin(async move {
                    let _ = old
                        .session
                        .send(Close {
                            reason: ReasonCode::SessionTakenOver,
                        })
                        .await;
                })
            }
            None => Box::pin(async {}),
        }
    }
}

impl Handler<Unregister> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Unregister, _: &mut Context<Self>) {
        if self
            .clients
            .get(&msg.client_id)
            .is_some_and(|e| e.conn_id == msg.conn_id)
        {
            self.clients.remove(&msg.client_id);
            debug!("client {:?}: unregistered", msg.client_id);
        }
        self.notify_if_drained();
    }
}

impl Handler<Shutdown> for Registry {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        self.shutting_down = true;
        let (tx, rx) = oneshot::channel();
        self.shutdown_waiters.push(tx);
        for entry in self.clients.values() {
            // Exactly one message per client, so this fan-out is bounded; `do_send` makes sure
            // a session with a full mailbox still gets it.
            entry.session.do_send(Close {
                reason: ReasonCode::ServerShuttingDown,
            });
        }
        self.notify_if_drained();
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<ActiveClients> for Registry {
    type Result = usize;

    fn handle(&mut self, _: ActiveClients, _: &mut Context<Self>) -> usize {
        self.clients.len()
    }
}
