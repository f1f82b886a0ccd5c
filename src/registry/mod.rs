//! The Registry actor: which connection owns each client identifier, every subscription, the
//! retained messages, and routing between them.
//!
//! It is the single authority for take-over [MQTT-3.1.4-3]: a new connection registers first
//! and the old one is told to close, so two live connections never share an id.
//!
//! Fan-out is bounded and never blocks the Registry: each session has a bounded delivery queue
//! that the Registry only `try_send`s into. When a subscriber's queue is full, its deliveries
//! wait in order in a bounded backlog here, and the publishers of QoS 1/2 messages in it get
//! their PUBACK/PUBREC only once their message is in the queue: a subscriber that is merely
//! slower than its publishers slows them down instead of losing acknowledged messages. A
//! subscriber that takes nothing for `HOLD_LIMIT` is treated as stuck: its publishers are
//! released at once, and what no longer fits its backlog is dropped (drop-new) and counted, so
//! one stuck client cannot stall the others. The backlog holds at most `max_queued_messages`
//! deliveries that hold no acknowledgement (QoS 0, or for a stuck subscriber); those that do
//! are bounded by their publishers' Receive Maximum.

pub mod retained;
pub mod subscriptions;

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use log::{debug, info};
use tokio::sync::{mpsc, oneshot};

use crate::clock::unix_millis;
use crate::message::{AppMessage, Delivery};
use crate::messages::{
    ActiveClients, Close, Publish, Register, Shutdown, Subscribe, SubscribeOutcome, SubscribeReply,
    Unregister, Unsubscribe,
};
use crate::mqtt::{QoS, ReasonCode, RetainHandling, topic};
use crate::session::Abort;
use crate::stats::Counters;
use retained::RetainedStore;
use subscriptions::{Route, SubscriptionTree};

struct Entry {
    conn_id: u64,
    session: Recipient<Close>,
    deliveries: mpsc::Sender<Delivery>,
    abort: Arc<Abort>,
    /// Deliveries waiting for room in `deliveries`, in order.
    backlog: VecDeque<Held>,
    /// A future is waiting for room in `deliveries` to move the backlog on.
    draining: bool,
    /// The backlog has not moved for `HOLD_LIMIT`: its publishers were released.
    stuck: bool,
}

impl Entry {
    fn new(
        conn_id: u64,
        session: Recipient<Close>,
        deliveries: mpsc::Sender<Delivery>,
        abort: Arc<Abort>,
    ) -> Entry {
        Entry {
            conn_id,
            session,
            deliveries,
            abort,
            backlog: VecDeque::new(),
            draining: false,
            stuck: false,
        }
    }
}

/// A delivery in a backlog, with the acknowledgement its publisher waits for.
struct Held {
    delivery: Delivery,
    ack: Option<Rc<AckGroup>>,
}

/// One published message's deliveries that have not reached their queues yet; the publisher's
/// acknowledgement is released when the last one has (or when its holder is dropped: a
/// subscriber that went away, or one found stuck).
struct AckGroup(Cell<Option<oneshot::Sender<()>>>);

impl Drop for AckGroup {
    fn drop(&mut self) {
        if let Some(reply) = self.0.take() {
            let _ = reply.send(());
        }
    }
}

/// Holds the active clients, their subscriptions and the retained messages.
pub struct Registry {
    clients: HashMap<Arc<str>, Entry>,
    subscriptions: SubscriptionTree,
    retained: RetainedStore<Arc<AppMessage>>,
    counters: Arc<Counters>,
    /// Reused by every `route` call, so routing does not allocate a Vec per message.
    routes: Vec<Route>,
    /// Most deliveries one subscriber's backlog holds (`max_queued_messages`).
    backlog_limit: usize,
    /// How often `$SYS` topics are published; `None` = never.
    sys_interval: Option<Duration>,
    started_at: std::time::Instant,
    /// Replies owed to `Shutdown` callers, sent when the last client has unregistered.
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    shutting_down: bool,
}

/// How long a new connection waits for the one it takes over to close by itself (and then
/// again after aborting it).
const TAKEOVER_WAIT: Duration = Duration::from_secs(1);

/// How long a backlog may stand still before its subscriber is treated as stuck.
const HOLD_LIMIT: Duration = Duration::from_millis(500);

/// Room for messages from sessions. A session whose `try_send` finds it full waits for room and
/// stops reading its socket meanwhile; a larger mailbox only absorbs bursts.
const MAILBOX_CAPACITY: usize = 1024;

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        if let Some(every) = self.sys_interval {
            self.publish_sys(ctx);
            ctx.run_interval(every, |act, ctx| act.publish_sys(ctx));
        }
    }
}

impl Registry {
    /// A registry holding the retained messages loaded from the database.
    pub fn new(
        retained_messages: Vec<AppMessage>,
        counters: Arc<Counters>,
        backlog_limit: usize,
        sys_interval: Option<Duration>,
    ) -> Registry {
        let mut retained = RetainedStore::new();
        for message in retained_messages {
            let topic = message.topic.clone();
            retained.insert(&topic, Arc::new(message));
        }
        Registry {
            clients: HashMap::new(),
            subscriptions: SubscriptionTree::default(),
            retained,
            counters,
            routes: Vec::new(),
            backlog_limit,
            sys_interval,
            started_at: std::time::Instant::now(),
            shutdown_waiters: Vec::new(),
            shutting_down: false,
        }
    }

    /// Publishes the broker's state under `$SYS/broker/` with Mosquitto's topic names, retained
    /// (in memory only: it is rebuilt at start), so a new subscriber gets it at once. Clients
    /// see it only where their ACL lets them receive it; `#` never matches it [MQTT-4.7.2-1].
    fn publish_sys(&mut self, ctx: &mut Context<Self>) {
        let c = &self.counters;
        let values = [
            ("version", format!("mqttd {}", env!("CARGO_PKG_VERSION"))),
            (
                "uptime",
                format!("{} seconds", self.started_at.elapsed().as_secs()),
            ),
            ("clients/connected", self.clients.len().to_string()),
            ("subscriptions/count", self.subscriptions.len().to_string()),
            ("retained messages/count", self.retained.len().to_string()),
            (
                "messages/received",
                Counters::get(&c.messages_received).to_string(),
            ),
            ("messages/sent", Counters::get(&c.messages_sent).to_string()),
        ];
        for (name, value) in values {
            let topic: Arc<str> = format!("$SYS/broker/{name}").into();
            let message = Arc::new(AppMessage {
                topic: topic.clone(),
                payload: value.into(),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: Default::default(),
                expires_at_ms: None,
                publisher: "$SYS".into(),
            });
            self.retained.insert(&topic, message.clone());
            let nobody_waits = Rc::new(AckGroup(Cell::new(None)));
            self.route(&message, &nobody_waits, ctx);
        }
    }

    /// Whether connection `conn_id` is the one registered for `client_id`.
    fn owns(&self, client_id: &str, conn_id: u64) -> bool {
        self.clients
            .get(client_id)
            .is_some_and(|e| e.conn_id == conn_id)
    }

    fn notify_if_drained(&mut self) {
        if self.shutting_down && self.clients.is_empty() {
            for waiter in self.shutdown_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    fn count_drop(&self, delivery: &Delivery) {
        debug!(
            "dropped a QoS {} message on {:?}",
            delivery.qos as u8, delivery.message.topic
        );
        if delivery.qos == QoS::AtMostOnce {
            Counters::add(&self.counters.dropped_qos0);
        } else {
            Counters::add(&self.counters.dropped_queue_full);
        }
    }

    /// Queues a delivery for `client` without waiting: into its queue if nothing is waiting
    /// before it and there is room, else at the end of its backlog (holding `ack` while the
    /// subscriber is not stuck), else nowhere (dropped and counted).
    fn offer(
        &mut self,
        client: &Arc<str>,
        delivery: Delivery,
        ack: &Rc<AckGroup>,
        ctx: &mut Context<Self>,
    ) {
        let Some(entry) = self.clients.get_mut(client) else {
            return;
        };
        let delivery = if entry.backlog.is_empty() {
            match entry.deliveries.try_send(delivery) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Closed(_)) => return,
                Err(mpsc::error::TrySendError::Full(delivery)) => delivery,
            }
        } else {
            delivery
        };
        // A delivery that holds its publisher's acknowledgement is bounded by that publisher's
        // Receive Maximum, so only the others count against the backlog limit.
        let hold = delivery.qos != QoS::AtMostOnce && !entry.stuck;
        if !hold && entry.backlog.len() >= self.backlog_limit {
            self.count_drop(&delivery);
            return;
        }
        let ack = hold.then(|| ack.clone());
        entry.backlog.push_back(Held { delivery, ack });
        if !entry.draining {
            entry.draining = true;
            let conn_id = entry.conn_id;
            self.drain(client.clone(), conn_id, ctx);
        }
    }

    /// Waits for room in `client`'s queue, then moves its backlog on; gives up holding the
    /// publishers if no room comes within `HOLD_LIMIT`.
    fn drain(&mut self, client: Arc<str>, conn_id: u64, ctx: &mut Context<Self>) {
        let Some(entry) = self.clients.get(&client).filter(|e| e.conn_id == conn_id) else {
            return;
        };
        let room = tokio::time::timeout(HOLD_LIMIT, entry.deliveries.clone().reserve_owned());
        room.into_actor(self)
            .map(move |room, act, ctx| {
                let Some(entry) = act
                    .clients
                    .get_mut(&client)
                    .filter(|e| e.conn_id == conn_id)
                else {
                    return;
                };
                match room {
                    // The session is gone; its entry goes with its Unregister.
                    Ok(Err(_)) => entry.draining = false,
                    Err(_) => {
                        // Stuck: release every publisher held here; the deliveries stay
                        // queued and nothing more is held for this subscriber.
                        entry.stuck = true;
                        for held in &mut entry.backlog {
                            held.ack = None;
                        }
                        act.drain(client, conn_id, ctx);
                    }
                    Ok(Ok(permit)) => {
                        entry.stuck = false;
                        if let Some(held) = entry.backlog.pop_front() {
                            permit.send(held.delivery);
                        }
                        while let Some(held) = entry.backlog.pop_front() {
                            match entry.deliveries.try_send(held.delivery) {
                                Ok(()) => {}
                                Err(mpsc::error::TrySendError::Full(delivery))
                                | Err(mpsc::error::TrySendError::Closed(delivery)) => {
                                    entry.backlog.push_front(Held {
                                        delivery,
                                        ack: held.ack,
                                    });
                                    break;
                                }
                            }
                        }
                        if entry.backlog.is_empty() {
                            entry.draining = false;
                        } else {
                            act.drain(client, conn_id, ctx);
                        }
                    }
                }
            })
            .spawn(ctx);
    }

    /// Routes a message; `ack` is released (dropped) once every delivery is in a queue.
    fn route(&mut self, message: &Arc<AppMessage>, ack: &Rc<AckGroup>, ctx: &mut Context<Self>) {
        if message.remaining_expiry(unix_millis()) == Some(0) {
            Counters::add(&self.counters.dropped_expired);
            return;
        }
        let mut routes = std::mem::take(&mut self.routes);
        self.subscriptions
            .route(&message.topic, &message.publisher, &mut routes);
        for route in routes.drain(..) {
            let delivery = Delivery {
                message: message.clone(),
                qos: message.qos.min(route.qos),
                retain: message.retain && route.retain_as_published,
                subscription_ids: route.subscription_ids,
            };
            self.offer(&route.client, delivery, ack, ctx);
        }
        self.routes = routes;
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
        let new = Entry::new(msg.conn_id, msg.session, msg.deliveries, msg.abort);
        match self.clients.insert(msg.client_id.clone(), new) {
            Some(old) => {
                info!(
                    "client {:?}: taken over by connection {}",
                    msg.client_id, msg.conn_id
                );
                // Sessions are not kept after their connection yet: the new one starts empty.
                self.subscriptions.remove_client(&msg.client_id);
                // Control messages are one per take-over, so `send` (which waits for mailbox
                // room) cannot pile up; the new session waits until the old one has ended,
                // unless the old one is stalled on a client that does not read.
                Box::pin(async move {
                    let close = old.session.send(Close {
                        reason: ReasonCode::SessionTakenOver,
                    });
                    tokio::pin!(close);
                    if tokio::time::timeout(TAKEOVER_WAIT, &mut close)
                        .await
                        .is_err()
                    {
                        // Paused on a client that does not read: end it from its writer. Its
                        // mailbox closes when it has stopped, which ends the wait.
                        info!("take-over: the old connection is stalled; aborting it");
                        old.abort.trigger();
                        let _ = tokio::time::timeout(TAKEOVER_WAIT, close).await;
                    }
                })
            }
            None => Box::pin(async {}),
        }
    }
}

impl Handler<Unregister> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Unregister, _: &mut Context<Self>) {
        if self.owns(&msg.client_id, msg.conn_id) {
            self.clients.remove(&msg.client_id);
            self.subscriptions.remove_client(&msg.client_id);
            debug!("client {:?}: unregistered", msg.client_id);
        }
        self.notify_if_drained();
    }
}

impl Handler<Subscribe> for Registry {
    type Result = MessageResult<Subscribe>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        let now = unix_millis();
        let mut reply = SubscribeReply {
            outcomes: Vec::with_capacity(msg.filters.len()),
            retained: Vec::new(),
        };
        if !self.owns(&msg.client_id, msg.conn_id) {
            // From a connection already taken over; it is closing and needs no answer.
            return MessageResult(reply);
        }
        let mut matched = Vec::new();
        for (filter, subscription) in msg.filters {
            let options = subscription.options;
            let identifier = subscription.identifier;
            let had = self
                .subscriptions
                .subscribe(&msg.client_id, &filter, subscription);
            // Only a new filter can go over the cap; it is taken back at once.
            if !had && self.subscriptions.client_count(&msg.client_id) > msg.max_subscriptions {
                self.subscriptions.unsubscribe(&msg.client_id, &filter);
                reply.outcomes.push(SubscribeOutcome::QuotaExceeded);
                continue;
            }
            reply.outcomes.push(if had {
                SubscribeOutcome::Replaced
            } else {
                SubscribeOutcome::Added
            });
            // Retained messages are never sent for shared subscriptions (§4.8.2).
            let send_retained = match options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNew => !had,
                RetainHandling::DoNotSend => false,
            } && topic::split_shared(&filter).is_none();
            if !send_retained {
                continue;
            }
            matched.clear();
            self.retained.matching(&filter, &mut matched);
            for message in matched.drain(..) {
                if message.remaining_expiry(now) == Some(0) {
                    continue;
                }
                reply.retained.push(Delivery {
                    qos: message.qos.min(options.qos),
                    message,
                    // [MQTT-3.3.1-9]: retained messages sent on subscribe carry RETAIN 1.
                    retain: true,
                    subscription_ids: identifier.into_iter().collect(),
                });
            }
        }
        MessageResult(reply)
    }
}

impl Handler<Unsubscribe> for Registry {
    type Result = MessageResult<Unsubscribe>;

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) -> Self::Result {
        if !self.owns(&msg.client_id, msg.conn_id) {
            return MessageResult(vec![false; msg.filters.len()]);
        }
        MessageResult(
            msg.filters
                .iter()
                .map(|f| self.subscriptions.unsubscribe(&msg.client_id, f))
                .collect(),
        )
    }
}

impl Handler<Publish> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) {
        let message = msg.message;
        if message.retain {
            // [MQTT-3.3.1-6] [MQTT-3.3.1-7]: an empty payload clears the topic's retained
            // message and is not stored itself.
            if message.payload.is_empty() {
                self.retained.remove(&message.topic);
            } else {
                self.retained
                    .insert(&message.topic.clone(), message.clone());
            }
        }
        // Dropped at the end of this handler unless a backlog holds on to it.
        let ack = Rc::new(AckGroup(Cell::new(msg.ack)));
        self.route(&message, &ack, ctx);
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
