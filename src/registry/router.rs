//! The subscriptions and the delivery queue of every connected client, shared by the Registry
//! (their only writer) and the sessions, so that a session can route a message itself instead
//! of a round trip through the Registry's mailbox.
//!
//! A session delivers directly only what needs nothing the Registry holds: a delivery to a
//! connected client whose queue has room, nothing waiting in its Registry backlog, and, for a
//! persistent session, QoS 0 (its QoS 1/2 messages are numbered and journalled first). Every
//! other delivery of the message goes to the Registry, which delivers it as before. Order per
//! publisher and subscriber [MQTT-4.6.0-6] holds because a subscriber with a backlog takes
//! nothing directly until the backlog is empty, and a publisher routes nothing directly while
//! a message of its own is still waiting in the Registry's mailbox (see `InRegistry`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::mpsc;

use super::subscriptions::{Route, SubscriptionTree};
use crate::message::{AppMessage, Delivery};
use crate::mqtt::QoS;

/// Where one client's deliveries go.
struct Target {
    /// `None` while a persistent session has no connection, or the connection has no queue
    /// yet (see `messages::Register`): the Registry decides then.
    queue: Option<mpsc::Sender<Delivery>>,
    /// A persistent session: QoS 1/2 deliveries are stored by the Registry first.
    stored: bool,
    /// Deliveries wait in the client's Registry backlog: later ones must queue behind them.
    backlogged: bool,
}

/// The state behind the lock.
#[derive(Default)]
pub struct Routing {
    pub tree: SubscriptionTree,
    targets: HashMap<Arc<str>, Target>,
}

/// Shared between the Registry and the sessions; held only for a routing decision or an
/// update, never across an await.
#[derive(Default)]
pub struct Router {
    inner: Mutex<Routing>,
}

impl Router {
    pub fn new(tree: SubscriptionTree) -> Router {
        Router {
            inner: Mutex::new(Routing {
                tree,
                targets: HashMap::new(),
            }),
        }
    }

    /// The lock. Nothing under it panics on purpose; were it poisoned, the state is still
    /// consistent (each update is a single map or tree operation), so it is used as it is.
    pub fn lock(&self) -> MutexGuard<'_, Routing> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Routes `message` from a session: every delivery that can go straight into its client's
    /// queue goes there; the Routes left in `rest` are the Registry's to deliver. A QoS 0
    /// message for a queue that is full (but has no backlog) goes to `full` instead, with the
    /// queue, for the session to wait for room (see `Session::wait_for_room`).
    pub fn route_direct(
        &self,
        message: &Arc<AppMessage>,
        rest: &mut Vec<Route>,
        full: &mut Vec<(Route, mpsc::Sender<Delivery>)>,
    ) {
        let mut routing = self.lock();
        let Routing { tree, targets } = &mut *routing;
        tree.route(&message.topic, &message.publisher, rest);
        rest.retain_mut(|route| {
            let Some(target) = targets.get(&route.client) else {
                // Neither connected nor a persistent session: nothing to deliver to.
                return false;
            };
            let qos = message.qos.min(route.qos);
            let registry_only = target.backlogged || (target.stored && qos != QoS::AtMostOnce);
            let Some(queue) = target.queue.as_ref().filter(|_| !registry_only) else {
                return true;
            };
            match queue.try_send(route.delivery(message)) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => false,
                Err(mpsc::error::TrySendError::Full(delivery)) => {
                    route.subscription_ids = delivery.subscription_ids.into();
                    if message.qos == QoS::AtMostOnce {
                        full.push((route.clone(), queue.clone()));
                        return false;
                    }
                    true
                }
            }
        });
    }
}

impl Route {
    /// The delivery of `message` along this Route (its identifiers taken).
    pub fn delivery(&mut self, message: &Arc<AppMessage>) -> Delivery {
        Delivery {
            message: message.clone(),
            qos: message.qos.min(self.qos),
            retain: message.retain && self.retain_as_published,
            subscription_ids: std::mem::take(&mut self.subscription_ids).into(),
            packet_id: None,
            dup: false,
        }
    }
}

impl Routing {
    /// A connection registered `client` (replacing an earlier connection's queue).
    pub fn connect(
        &mut self,
        client: &Arc<str>,
        queue: Option<mpsc::Sender<Delivery>>,
        stored: bool,
    ) {
        self.targets.insert(
            client.clone(),
            Target {
                queue,
                stored,
                backlogged: false,
            },
        );
    }

    /// `client`'s connection opened its delivery queue.
    pub fn set_queue(&mut self, client: &str, queue: mpsc::Sender<Delivery>) {
        if let Some(target) = self.targets.get_mut(client) {
            target.queue = Some(queue);
        }
    }

    /// `client`'s connection ended; a persistent session stays a target for the Registry.
    pub fn disconnect(&mut self, client: &str, stored: bool) {
        if stored {
            if let Some(target) = self.targets.get_mut(client) {
                target.queue = None;
                target.backlogged = false;
            }
        } else {
            self.targets.remove(client);
        }
    }

    /// A persistent session without a connection: routed through the Registry, which stores
    /// its QoS 1/2 messages.
    pub fn keep(&mut self, client: &Arc<str>) {
        self.targets.entry(client.clone()).or_insert(Target {
            queue: None,
            stored: true,
            backlogged: false,
        });
    }

    /// The session and its subscriptions are gone.
    pub fn forget(&mut self, client: &str) {
        self.targets.remove(client);
        self.tree.remove_client(client);
    }

    /// Whether `client`'s Registry backlog holds deliveries.
    pub fn set_backlogged(&mut self, client: &str, backlogged: bool) {
        if let Some(target) = self.targets.get_mut(client) {
            target.backlogged = backlogged;
        }
    }
}

/// A session's messages sent to the Registry and not yet routed by it: while there are any,
/// the session routes nothing directly, so nothing overtakes them.
#[derive(Debug, Default)]
pub struct InRegistry(AtomicUsize);

impl InRegistry {
    pub fn sent(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    /// Called by the Registry once the message is in its subscribers' queues or backlogs
    /// (and their `backlogged` flags are set).
    pub fn routed(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn is_empty(&self) -> bool {
        self.0.load(Ordering::Acquire) == 0
    }
}
