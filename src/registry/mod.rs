//! The Registry actor: which connection owns each client identifier, every subscription, the
//! retained messages, and routing between them.
//!
//! It is the single authority for take-over [MQTT-3.1.4-3]: a new connection registers first
//! and the old one is told to close, so two live connections never share an id.
//!
//! Sessions route most messages themselves, through the subscriptions the Registry shares with
//! them (`router`); the Registry delivers what needs its state: retained messages, persistent
//! sessions' QoS 1/2 messages, and anything behind a backlog.
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
//!
//! Persistent sessions (see `kept`) outlive their connections here: their subscriptions stay
//! in the trie, their QoS 1/2 messages are numbered, journalled and tracked until acknowledged,
//! and every acknowledgement that promises durable state waits for the journal's commit.

mod kept;
pub mod retained;
pub mod router;
pub mod subscriptions;

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use log::{debug, info, warn};
use tokio::sync::{mpsc, oneshot};

use crate::clock::unix_millis;
use crate::db::{ConnectionLog, DbActor};
use crate::message::{AppMessage, Delivery};
use crate::messages::{
    AckStep, Acknowledged, AclRefreshed, AclReload, ActiveClients, Close, Commit, Flush, Publish,
    RecordConnect, RefreshAcl, Register, Registered, ReloadAcl, Shutdown, StoreRetained, Subscribe,
    SubscribeOutcome, SubscribeReply, Unregister, Unsubscribe,
};
use crate::messages::{
    ClientSummary, ConnectionInfo, GetClient, Kick, Kicked, ListClients, ListRetained,
    ListSessions, Page, RetainedSummary, SessionSummary,
};
use crate::mqtt::{QoS, ReasonCode, RetainHandling, topic};
use crate::persist::{StoreOp, StoredState, StoredWill, session_deadline};
use crate::session::{Abort, Session};
use crate::stats::{Counters, SysLoad};
use kept::{AckGroup, Deferred, Journal, Kept, Waiter};
use retained::RetainedStore;
use router::Router;
use subscriptions::{Route, SubscriptionTree};

/// What `store` did with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    /// Not for a persistent session (or QoS 0 to a connected one): queue it as it is.
    NotKept,
    /// Numbered and journalled: it may be sent once committed.
    Journalled,
    /// Not kept: the session is offline and full, out of packet ids, or it is QoS 0.
    Dropped,
}

struct Entry {
    conn_id: u64,
    /// Told to `Close`, and asked to reload its ACL rules (`ReloadAcl`).
    session: Addr<Session>,
    /// `None` until the session opens it (see `messages::Register`).
    deliveries: Option<mpsc::Sender<Delivery>>,
    abort: Arc<Abort>,
    /// For the admin API.
    info: ConnectionInfo,
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
        session: Addr<Session>,
        deliveries: Option<mpsc::Sender<Delivery>>,
        abort: Arc<Abort>,
        info: ConnectionInfo,
    ) -> Entry {
        Entry {
            conn_id,
            session,
            deliveries,
            abort,
            info,
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

/// What the Registry is configured with.
pub struct Settings {
    /// Most deliveries one subscriber's backlog holds (`max_queued_messages`), and most
    /// messages an offline persistent session keeps.
    pub backlog_limit: usize,
    /// Most payload bytes an offline persistent session keeps.
    pub max_queued_bytes: usize,
    /// For retained Wills published by the Registry.
    pub max_retained_messages: usize,
    /// How often `$SYS` topics are published; `None` = never.
    pub sys_interval: Option<Duration>,
    /// `client_id_binding`: an id held by a user is refused to others (see `owner_conflict`).
    pub client_id_binding: bool,
}

/// Holds the active clients, their subscriptions and the retained messages.
pub struct Registry {
    /// Boxed: the map keeps about twice as many slots as entries.
    clients: HashMap<Arc<str>, Box<Entry>>,
    /// Persistent sessions, connected or not (see `kept`).
    kept: HashMap<Arc<str>, Kept>,
    journal: Journal,
    /// The database actor thread that commits the journal (one writer).
    db: Addr<DbActor>,
    /// Records each registered connection (see `Register::record`).
    log: Addr<ConnectionLog>,
    /// The subscriptions, and where each client's deliveries go; shared with the sessions,
    /// which route through it directly (see `router`).
    router: Arc<Router>,
    retained: RetainedStore<Arc<AppMessage>>,
    counters: Arc<Counters>,
    /// Reused by every `route` call, so routing does not allocate a Vec per message.
    routes: Vec<Route>,
    settings: Settings,
    started_at: std::time::Instant,
    /// The `$SYS/broker/load/...` averages.
    load: SysLoad,
    /// Replies owed to `Shutdown` callers, sent when the last client has unregistered.
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    shutting_down: bool,
    /// Wills of sessions that expired while the broker was down, published at start.
    due_wills: Vec<StoredWill>,
}

/// How long a new connection waits for the one it takes over to close by itself (and then
/// again after aborting it).
const TAKEOVER_WAIT: Duration = Duration::from_secs(1);

/// How long `ReloadAcl` waits for the sessions to answer before it reports the rest as pending.
const ACL_RELOAD_WAIT: Duration = Duration::from_secs(5);

/// How long a backlog may stand still before its subscriber is treated as stuck.
pub const HOLD_LIMIT: Duration = Duration::from_millis(500);

/// How often persistent sessions are checked for expiry and due Wills, and the broker's
/// liveness is recorded (it dates the end of sessions connected at a crash).
const TICK: Duration = Duration::from_secs(1);

/// Room for messages from sessions. A session whose `try_send` finds it full waits for room and
/// stops reading its socket meanwhile; a larger mailbox only absorbs bursts.
const MAILBOX_CAPACITY: usize = 1024;

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        ctx.run_interval(TICK, |act, ctx| act.tick(ctx));
        for will in std::mem::take(&mut self.due_wills) {
            self.publish_will(&will, ctx);
        }
        // Sessions that were connected at a crash were ended in `new`; store that now.
        self.commit_soon(ctx);
        if let Some(every) = self.settings.sys_interval {
            self.publish_sys(ctx);
            ctx.run_interval(every, |act, ctx| act.publish_sys(ctx));
        }
    }
}

impl Registry {
    /// A registry holding the retained messages and persistent sessions loaded from the
    /// database. Sessions that were connected when the previous run stopped (a crash) are
    /// ended as of its last sign of life: they start to expire, and their Wills become due.
    pub fn new(
        retained_messages: Vec<AppMessage>,
        stored: StoredState,
        counters: Arc<Counters>,
        db: Addr<DbActor>,
        log: Addr<ConnectionLog>,
        settings: Settings,
    ) -> Registry {
        let mut retained = RetainedStore::new();
        for message in retained_messages {
            let topic = message.topic.clone();
            retained.insert(&topic, Arc::new(message));
        }
        let mut journal = Journal::new(stored.next_message_id, stored.next_seq);
        let mut subscriptions = SubscriptionTree::default();
        let mut targets = Vec::new();
        let mut kept = HashMap::new();
        let now = unix_millis();
        let crashed_at = stored.last_alive_ms.unwrap_or(now);
        let mut wills = Vec::new();
        for session in stored.sessions {
            let client: Arc<str> = session.client_id.as_str().into();
            let mut state = Kept::restore(&session);
            for (filter, subscription) in &session.subscriptions {
                subscriptions.subscribe(&client, filter, *subscription);
            }
            let will_at = match session.expires_at_ms {
                Some(_) => session.will_at_ms,
                None => {
                    let interval = session.expiry_interval;
                    state.expires_at_ms = session_deadline(crashed_at, interval);
                    let will_at = session
                        .will
                        .as_ref()
                        .map(|w| crashed_at + i64::from(w.delay.min(interval)) * 1000);
                    journal.push(StoreOp::CloseSession {
                        client_id: client.clone(),
                        expires_at_ms: state.expires_at_ms,
                        will_at_ms: will_at,
                    });
                    will_at
                }
            };
            state.will = will_at.zip(session.will);
            if state.expires_at_ms.is_some_and(|at| at <= now) {
                // Expired while the broker was down: only its Will is left to publish.
                wills.extend(state.will.map(|(_, w)| w));
                journal.push(StoreOp::DeleteSession { client_id: client });
                continue;
            }
            targets.push(client.clone());
            kept.insert(client, state);
        }
        let router = Arc::new(Router::new(subscriptions));
        {
            let mut routing = router.update();
            for client in &targets {
                routing.keep(client);
            }
        }
        if !kept.is_empty() {
            info!("{} persistent session(s) restored", kept.len());
        }
        let load = SysLoad::new(&counters);
        Registry {
            clients: HashMap::new(),
            kept,
            journal,
            db,
            log,
            router,
            retained,
            counters,
            routes: Vec::new(),
            settings,
            started_at: std::time::Instant::now(),
            load,
            shutdown_waiters: Vec::new(),
            shutting_down: false,
            due_wills: wills,
        }
    }

    /// What sessions route through (see `router`).
    pub fn router(&self) -> Arc<Router> {
        self.router.clone()
    }

    /// Commits the journal's next batch, unless one is being committed: what arrives
    /// meanwhile waits for the next (group commit). The waiters are released once the
    /// database has answered.
    fn commit_soon(&mut self, ctx: &mut Context<Self>) {
        let Some((ops, waiting)) = self.journal.take_batch() else {
            return;
        };
        self.counters.commit_batch_ops.observe(ops.len() as u64);
        let commit = Commit {
            ops,
            alive_at_ms: unix_millis(),
        };
        let sent_at = std::time::Instant::now();
        self.db
            .send(commit)
            .into_actor(self)
            .map(move |result, act, ctx| {
                let took = u64::try_from(sent_at.elapsed().as_micros()).unwrap_or(u64::MAX);
                act.counters.commit_duration.observe(took);
                let committed = match result {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        warn!("storing persistent session state failed: {e}");
                        false
                    }
                    Err(e) => {
                        warn!("database actor unavailable: {e}");
                        false
                    }
                };
                Counters::add(&act.counters.commits);
                if !committed {
                    Counters::add(&act.counters.commits_failed);
                }
                for deferred in act.journal.finished(waiting, committed) {
                    if act.owns(&deferred.client, deferred.conn_id) {
                        act.queue(&deferred.client, deferred.delivery, &deferred.ack, ctx);
                    }
                }
                act.commit_soon(ctx);
            })
            .spawn(ctx);
    }

    /// Every `TICK`: expires offline persistent sessions, publishes the Wills that are due,
    /// and records that the broker is alive.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = unix_millis();
        let mut wills = Vec::new();
        let mut expired = Vec::new();
        for (client, kept) in &mut self.kept {
            if self.clients.contains_key(client) {
                continue;
            }
            if kept.expires_at_ms.is_some_and(|at| at <= now) {
                expired.push(client.clone());
            } else if kept.will.as_ref().is_some_and(|(at, _)| *at <= now) {
                wills.extend(kept.will.take().map(|(_, w)| w));
                self.journal.push(StoreOp::CloseSession {
                    client_id: client.clone(),
                    expires_at_ms: kept.expires_at_ms,
                    will_at_ms: None,
                });
            }
        }
        for client in expired {
            debug!("session {client:?} expired");
            Counters::add(&self.counters.sessions_expired);
            if let Some(kept) = self.kept.remove(&client) {
                // The session ends: its Will goes now if its delay has not run out yet.
                wills.extend(kept.will.map(|(_, w)| w));
            }
            self.router.update().forget(&client);
            self.journal
                .push(StoreOp::DeleteSession { client_id: client });
        }
        for will in wills {
            self.publish_will(&will, ctx);
        }
        if !self.kept.is_empty() && self.journal.is_idle() {
            // Nothing else to commit: an empty batch still records the time.
            drop(self.journal.committed());
        }
        self.commit_soon(ctx);
    }

    /// Publishes a Will on behalf of a session that has no connection: a retained one is
    /// committed to the retained table first, as a PUBLISH would be.
    fn publish_will(&mut self, will: &StoredWill, ctx: &mut Context<Self>) {
        let message = will.publication(unix_millis());
        if !message.retain {
            self.publish(message, &AckGroup::new(None), ctx);
            return;
        }
        let store = StoreRetained {
            message: message.clone(),
            max_messages: self.settings.max_retained_messages,
        };
        self.db
            .send(store)
            .into_actor(self)
            .map(move |result, act, ctx| {
                let message = match result {
                    Ok(Ok(true)) => message,
                    Ok(Ok(false)) => {
                        Counters::add(&act.counters.retained_refused);
                        Arc::new(AppMessage {
                            retain: false,
                            ..AppMessage::clone(&message)
                        })
                    }
                    Ok(Err(e)) => {
                        warn!("storing a retained Will failed: {e}");
                        message
                    }
                    Err(e) => {
                        warn!("database actor unavailable: {e}");
                        message
                    }
                };
                act.publish(message, &AckGroup::new(None), ctx);
                act.commit_soon(ctx);
            })
            .spawn(ctx);
    }

    /// Updates the retained store for a RETAIN message, then routes it.
    fn publish(&mut self, message: Arc<AppMessage>, ack: &Rc<AckGroup>, ctx: &mut Context<Self>) {
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
        self.route(&message, ack, ctx);
    }

    /// Publishes the broker's state under `$SYS/broker/` with Mosquitto's topic names, retained
    /// (in memory only: it is rebuilt at start), so a new subscriber gets it at once. Clients
    /// see it only where their ACL lets them receive it; `#` never matches it [MQTT-4.7.2-1].
    /// The load averages (`load/messages/received/1min` ...) move at each call, as Mosquitto's
    /// do at each `sys_interval` (see `stats::LoadAverage`); they are 0.00 at start.
    fn publish_sys(&mut self, ctx: &mut Context<Self>) {
        let c = &self.counters;
        self.load.update(c);
        let values = [
            ("version", format!("mqttd {}", env!("CARGO_PKG_VERSION"))),
            (
                "uptime",
                format!("{} seconds", self.started_at.elapsed().as_secs()),
            ),
            ("clients/connected", self.clients.len().to_string()),
            // Mosquitto's meaning: connected clients plus persistent sessions without a
            // connection.
            (
                "clients/total",
                (self.clients.len()
                    + self
                        .kept
                        .keys()
                        .filter(|id| !self.clients.contains_key(*id))
                        .count())
                .to_string(),
            ),
            (
                "subscriptions/count",
                self.router.subscription_count(None).to_string(),
            ),
            ("retained messages/count", self.retained.len().to_string()),
            ("messages/received", c.messages_received.total().to_string()),
            ("messages/sent", c.messages_sent.total().to_string()),
        ]
        .map(|(name, value)| (name.to_string(), value));
        let values: Vec<(String, String)> = values.into_iter().chain(self.load.values()).collect();
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
            self.route(&message, &AckGroup::new(None), ctx);
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

    /// Stores a QoS 1/2 delivery for a persistent session: numbered, tracked until the client
    /// acknowledges it, and journalled (`ack` waits for the commit).
    fn store(
        &mut self,
        client: &Arc<str>,
        delivery: &mut Delivery,
        message_id: &mut Option<i64>,
        ack: &Rc<AckGroup>,
    ) -> Stored {
        let online = self.clients.contains_key(client);
        let Some(kept) = self.kept.get_mut(client) else {
            return Stored::NotKept;
        };
        let limits = (self.settings.backlog_limit, self.settings.max_queued_bytes);
        if delivery.qos == QoS::AtMostOnce {
            // QoS 0 is not kept for offline sessions (Mosquitto's default too).
            return if online {
                Stored::NotKept
            } else {
                Stored::Dropped
            };
        }
        if !online && kept.is_full(limits.0, limits.1) {
            Counters::add(&self.counters.dropped_session_full);
            return Stored::Dropped;
        }
        let seq = self.journal.seq();
        let Some(stored) = kept.track(seq, delivery) else {
            Counters::add(&self.counters.dropped_session_full);
            return Stored::Dropped;
        };
        if online {
            kept.handed(seq);
        }
        let message_id = *message_id.get_or_insert_with(|| self.journal.message_id());
        self.journal.push(StoreOp::Enqueue {
            client_id: client.clone(),
            message_id,
            message: delivery.message.clone(),
            delivery: stored,
        });
        self.journal.wait_ack(ack);
        Stored::Journalled
    }

    /// Queues a delivery for `client` without waiting: into its queue if nothing is waiting
    /// before it and there is room, else at the end of its backlog (holding `ack` while the
    /// subscriber is not stuck), else nowhere (dropped and counted). A persistent session's
    /// QoS 1/2 messages are stored first, so one that cannot be queued now is sent on resume.
    fn offer(
        &mut self,
        client: &Arc<str>,
        mut delivery: Delivery,
        ack: &Rc<AckGroup>,
        message_id: &mut Option<i64>,
        ctx: &mut Context<Self>,
    ) {
        match self.store(client, &mut delivery, message_id, ack) {
            Stored::NotKept => self.queue(client, delivery, ack, ctx),
            Stored::Dropped => {}
            // Sent once committed; an offline session gets it when it resumes.
            Stored::Journalled => {
                if let Some(entry) = self.clients.get(client) {
                    self.journal.defer(Deferred {
                        client: client.clone(),
                        conn_id: entry.conn_id,
                        delivery,
                        ack: ack.clone(),
                    });
                }
            }
        }
    }

    /// Puts a delivery in a connected client's queue, or its backlog, or drops it.
    fn queue(
        &mut self,
        client: &Arc<str>,
        delivery: Delivery,
        ack: &Rc<AckGroup>,
        ctx: &mut Context<Self>,
    ) {
        let Some(entry) = self.clients.get_mut(client) else {
            return;
        };
        let Some(queue) = &entry.deliveries else {
            // No queue, so no subscription either: a message routed just before it ended.
            return;
        };
        let delivery = if entry.backlog.is_empty() {
            match queue.try_send(delivery) {
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
        if !hold && entry.backlog.len() >= self.settings.backlog_limit {
            self.count_drop(&delivery);
            return;
        }
        let ack = hold.then(|| ack.clone());
        if entry.backlog.is_empty() {
            // Sessions must not deliver past the backlog from now on.
            self.router.update().set_backlogged(client, true);
        }
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
        let Some(queue) = entry.deliveries.clone() else {
            return;
        };
        let room = tokio::time::timeout(HOLD_LIMIT, queue.reserve_owned());
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
                            let queue = permit.send(held.delivery);
                            while let Some(held) = entry.backlog.pop_front() {
                                match queue.try_send(held.delivery) {
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
                        }
                        if entry.backlog.is_empty() {
                            entry.draining = false;
                            act.router.update().set_backlogged(&client, false);
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
        self.router
            .route(&message.topic, &message.publisher, &mut routes);
        self.deliver(message, &mut routes, ack, ctx);
        self.routes = routes;
    }

    /// Delivers a message along `routes` (emptied): those `route` found, or those a session
    /// left to the Registry (see `router`).
    fn deliver(
        &mut self,
        message: &Arc<AppMessage>,
        routes: &mut Vec<Route>,
        ack: &Rc<AckGroup>,
        ctx: &mut Context<Self>,
    ) {
        // Stored once, however many persistent sessions it goes to.
        let mut message_id = None;
        for mut route in routes.drain(..) {
            let delivery = route.take_delivery(message);
            self.offer(&route.client, delivery, ack, &mut message_id, ctx);
        }
    }
}

impl Registry {
    /// The persistent-session side of a new connection: resume, discard or create the stored
    /// session, and journal it. Also returns what fires once that is committed, for a session
    /// that is stored.
    fn open_session(
        &mut self,
        msg: &mut Register,
        ctx: &mut Context<Self>,
    ) -> (Registered, Option<oneshot::Receiver<bool>>) {
        let client = msg.client_id.clone();
        let mut reply = Registered::default();
        let mut committed = None;
        if let Some(mut old) = self.kept.remove(&client) {
            if msg.clean_start {
                // [MQTT-3.1.2-4]: the old session ends, and a Will it still owed goes now.
                if let Some((_, will)) = old.will.take() {
                    self.publish_will(&will, ctx);
                }
                self.journal.push(StoreOp::DeleteSession {
                    client_id: client.clone(),
                });
            } else {
                // A new connection before the Will Delay ran out: no Will [MQTT-3.1.3-9].
                old.will = None;
                reply.session_present = true;
                (reply.release, reply.resend) = old.resume();
                reply.inbound_qos2 = old.inbound_qos2.iter().copied().collect();
                if msg.expiry_interval > 0 {
                    old.expiry_interval = msg.expiry_interval;
                    old.expires_at_ms = None;
                    self.kept.insert(client.clone(), old);
                } else {
                    // Resumed, but it now ends with this connection: nothing more is stored.
                    self.journal.push(StoreOp::DeleteSession {
                        client_id: client.clone(),
                    });
                }
            }
        }
        if !reply.session_present {
            self.router.update().tree.remove_client(&client);
        }
        if msg.expiry_interval > 0 {
            let kept = self
                .kept
                .entry(client.clone())
                .or_insert_with(|| Kept::new(msg.expiry_interval));
            kept.username = msg.info.username.clone();
            self.journal.push(StoreOp::OpenSession {
                client_id: client,
                clean: !reply.session_present,
                expiry_interval: msg.expiry_interval,
                will: msg.will.take(),
            });
            committed = Some(self.journal.committed());
        }
        self.commit_soon(ctx);
        (reply, committed)
    }

    /// `client_id_binding` (§5.4.2): whether the id is held, by a connection or a stored
    /// session, for a user other than the one `msg` authenticated as. Ids held anonymously are
    /// not bound; an anonymous connection may not take an id held by a user.
    fn owner_conflict(&self, msg: &Register) -> bool {
        if !self.settings.client_id_binding {
            return false;
        }
        let connected = self.clients.get(&msg.client_id).map(|e| &e.info.username);
        let stored = self.kept.get(&msg.client_id).map(|k| &k.username);
        let theirs = |owner: Option<&Option<String>>| {
            owner
                .and_then(Option::as_ref)
                .is_some_and(|owner| msg.info.username.as_ref() != Some(owner))
        };
        theirs(connected) || theirs(stored)
    }
}

impl Handler<Register> for Registry {
    type Result = ResponseFuture<Registered>;

    fn handle(&mut self, mut msg: Register, ctx: &mut Context<Self>) -> Self::Result {
        if self.shutting_down {
            // Accepted just before the listener stopped: close it like everyone else.
            let session = msg.session;
            return Box::pin(async move {
                let _ = session
                    .send(Close {
                        reason: ReasonCode::ServerShuttingDown,
                    })
                    .await;
                Registered::default()
            });
        }
        if self.owner_conflict(&msg) {
            // Refused before anything changes: the holder keeps its connection and session. The
            // session logs the refusal at info level.
            debug!(
                "client {:?}: connection {} refused, the id is bound to another user",
                msg.client_id, msg.conn_id
            );
            return Box::pin(async {
                Registered {
                    bound_to_another_user: true,
                    ..Registered::default()
                }
            });
        }
        let (reply, committed) = self.open_session(&mut msg, ctx);
        // Recorded from here rather than by the session once this replies: one round trip
        // between the session's thread and this one less per connection.
        let recorded = record_once_committed(reply, committed, self.log.clone(), msg.record);
        let stored = self.kept.contains_key(&msg.client_id);
        self.router
            .update()
            .connect(&msg.client_id, msg.deliveries.clone(), stored);
        let new = Box::new(Entry::new(
            msg.conn_id,
            msg.session,
            msg.deliveries.map(|outlet| outlet.queue),
            msg.abort,
            msg.info,
        ));
        match self.clients.insert(msg.client_id.clone(), new) {
            Some(old) => {
                // The old session logs its end ("taken over") at info level: one line per event.
                debug!(
                    "client {:?}: taken over by connection {}",
                    msg.client_id, msg.conn_id
                );
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
                        debug!("take-over: the old connection is stalled; aborting it");
                        old.abort.trigger();
                        let _ = tokio::time::timeout(TAKEOVER_WAIT, close).await;
                    }
                    recorded.await
                })
            }
            None => Box::pin(recorded),
        }
    }
}

/// Sends `record` to the ConnectionLog once the session's state is `committed` (if it is
/// stored), and resolves to `reply` with its answer: a connection refused because its
/// session could not be stored is never recorded as connected.
async fn record_once_committed(
    mut reply: Registered,
    committed: Option<oneshot::Receiver<bool>>,
    log: Addr<ConnectionLog>,
    record: RecordConnect,
) -> Registered {
    if let Some(committed) = committed
        && committed.await != Ok(true)
    {
        reply.storage_failed = true;
        return reply;
    }
    reply.recorded = Some(log.send(record).await);
    reply
}

impl Handler<Unregister> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Unregister, ctx: &mut Context<Self>) {
        if self.owns(&msg.client_id, msg.conn_id) {
            let client = msg.client_id;
            self.clients.remove(&client);
            match self.kept.get_mut(&client) {
                Some(kept) if msg.expiry_interval > 0 => {
                    let now = unix_millis();
                    let interval = msg.expiry_interval;
                    kept.expiry_interval = interval;
                    self.router.update().disconnect(&client, true);
                    kept.expires_at_ms = session_deadline(now, interval);
                    // Due at the earlier of the Will Delay and the end of the session.
                    kept.will = msg
                        .delayed_will
                        .map(|w| (now + i64::from(w.delay.min(interval)) * 1000, w));
                    self.journal.push(StoreOp::CloseSession {
                        client_id: client.clone(),
                        expires_at_ms: kept.expires_at_ms,
                        will_at_ms: kept.will.as_ref().map(|(at, _)| *at),
                    });
                }
                Some(_) => {
                    // DISCONNECT set the Session Expiry Interval to 0: the session ends now.
                    self.kept.remove(&client);
                    self.router.update().forget(&client);
                    self.journal.push(StoreOp::DeleteSession {
                        client_id: client.clone(),
                    });
                }
                None => self.router.update().forget(&client),
            }
            debug!("client {client:?}: unregistered");
            self.commit_soon(ctx);
        }
        self.notify_if_drained();
    }
}

impl Handler<Acknowledged> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Acknowledged, ctx: &mut Context<Self>) {
        let id = msg.packet_id;
        let Some(kept) = self.kept.get_mut(&msg.client_id) else {
            // Not a persistent session (any more): nothing is stored to wait for.
            match msg.step {
                AckStep::Completed => {}
                AckStep::Released(reply) | AckStep::InboundReleased(reply) => {
                    let _ = reply.send(true);
                }
            }
            return;
        };
        let client_id = msg.client_id;
        match msg.step {
            AckStep::Completed => {
                if kept.complete(id) {
                    self.journal.push(StoreOp::Completed {
                        client_id,
                        packet_id: id,
                    });
                }
            }
            AckStep::Released(reply) => {
                if kept.release(id) {
                    self.journal.push(StoreOp::Released {
                        client_id,
                        packet_id: id,
                    });
                }
                self.journal.wait(Waiter::Reply(reply));
            }
            AckStep::InboundReleased(reply) => {
                if kept.inbound_qos2.remove(&id) {
                    self.journal.push(StoreOp::InboundReleased {
                        client_id,
                        packet_id: id,
                    });
                }
                self.journal.wait(Waiter::Reply(reply));
            }
        }
        self.commit_soon(ctx);
    }
}

impl Handler<Flush> for Registry {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) -> Self::Result {
        let committed = self.journal.committed();
        self.commit_soon(ctx);
        Box::pin(async move {
            let _ = committed.await;
        })
    }
}

impl Handler<Subscribe> for Registry {
    type Result = MessageResult<Subscribe>;

    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) -> Self::Result {
        let now = unix_millis();
        let mut reply = SubscribeReply {
            outcomes: Vec::with_capacity(msg.filters.len()),
            retained: Vec::new(),
            committed: None,
        };
        if !self.owns(&msg.client_id, msg.conn_id) {
            // From a connection already taken over; it is closing and needs no answer.
            return MessageResult(reply);
        }
        if let Some(outlet) = msg.deliveries
            && let Some(entry) = self.clients.get_mut(&msg.client_id)
        {
            entry.deliveries = Some(outlet.queue.clone());
            self.router.update().set_queue(&msg.client_id, outlet);
        }
        let mut matched = Vec::new();
        for (filter, subscription) in msg.filters {
            let options = subscription.options;
            let identifier = subscription.identifier;
            // `None`: over the cap. Only a new filter can go over it; it is taken back at once.
            let had = {
                let tree = &mut self.router.update().tree;
                let had = tree.subscribe(&msg.client_id, &filter, subscription);
                if !had && tree.client_count(&msg.client_id) > msg.max_subscriptions {
                    tree.unsubscribe(&msg.client_id, &filter);
                    None
                } else {
                    Some(had)
                }
            };
            let Some(had) = had else {
                reply.outcomes.push(SubscribeOutcome::QuotaExceeded);
                continue;
            };
            reply.outcomes.push(if had {
                SubscribeOutcome::Replaced
            } else {
                SubscribeOutcome::Added
            });
            if self.kept.contains_key(&msg.client_id) {
                self.journal.push(StoreOp::Subscribe {
                    client_id: msg.client_id.clone(),
                    filter: filter.as_str().into(),
                    subscription,
                });
            }
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
                let mut delivery = Delivery {
                    qos: message.qos.min(options.qos),
                    message,
                    // [MQTT-3.3.1-9]: retained messages sent on subscribe carry RETAIN 1.
                    retain: true,
                    subscription_ids: identifier.into_iter().collect(),
                    packet_id: None,
                    dup: false,
                };
                // For a persistent session, SUBACK (and so these) waits for the commit.
                let nobody_waits = AckGroup::new(None);
                if self.store(&msg.client_id, &mut delivery, &mut None, &nobody_waits)
                    != Stored::Dropped
                {
                    reply.retained.push(delivery);
                }
            }
        }
        if self.kept.contains_key(&msg.client_id) {
            reply.committed = Some(self.journal.committed());
            self.commit_soon(ctx);
        }
        MessageResult(reply)
    }
}

impl Handler<Unsubscribe> for Registry {
    type Result = MessageResult<Unsubscribe>;

    fn handle(&mut self, msg: Unsubscribe, ctx: &mut Context<Self>) -> Self::Result {
        if !self.owns(&msg.client_id, msg.conn_id) {
            return MessageResult((vec![false; msg.filters.len()], None));
        }
        let existed: Vec<bool> = {
            let tree = &mut self.router.update().tree;
            msg.filters
                .iter()
                .map(|f| tree.unsubscribe(&msg.client_id, f))
                .collect()
        };
        if !self.kept.contains_key(&msg.client_id) {
            return MessageResult((existed, None));
        }
        for (filter, _) in msg.filters.iter().zip(&existed).filter(|(_, had)| **had) {
            self.journal.push(StoreOp::Unsubscribe {
                client_id: msg.client_id.clone(),
                filter: filter.as_str().into(),
            });
        }
        let committed = self.journal.committed();
        self.commit_soon(ctx);
        MessageResult((existed, Some(committed)))
    }
}

impl Handler<Publish> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) {
        // Dropped at the end of this handler unless a backlog or the journal holds on to it.
        let ack = AckGroup::new(msg.ack);
        if let Some(id) = msg.inbound_qos2
            && let Some(kept) = self.kept.get_mut(&msg.message.publisher)
            && kept.inbound_qos2.insert(id)
        {
            self.journal.push(StoreOp::InboundQos2 {
                client_id: msg.message.publisher.clone(),
                packet_id: id,
            });
            self.journal.wait_ack(&ack);
        }
        match msg.routes {
            Some(mut routes) => self.deliver(&msg.message, &mut routes, &ack, ctx),
            None => self.publish(msg.message, &ack, ctx),
        }
        if let Some(sender) = msg.sender {
            sender.routed();
        }
        self.commit_soon(ctx);
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

impl Handler<ReloadAcl> for Registry {
    type Result = ResponseFuture<AclReload>;

    /// Like `Shutdown`'s `Close`: exactly one `RefreshAcl` per connected session, so the
    /// fan-out is bounded; `send` queues it even into a full mailbox. The sessions load their
    /// rules concurrently (the DbActor's threads) while the Registry goes on routing.
    fn handle(&mut self, _: ReloadAcl, _: &mut Context<Self>) -> Self::Result {
        let answers: Vec<_> = self
            .clients
            .values()
            .map(|entry| entry.session.send(RefreshAcl))
            .collect();
        Box::pin(async move {
            let mut reload = AclReload::default();
            let answers = answers
                .into_iter()
                .map(|answer| tokio::time::timeout(ACL_RELOAD_WAIT, answer));
            for answer in futures_util::future::join_all(answers).await {
                match answer {
                    Ok(Ok(AclRefreshed::Reloaded)) => reload.reloaded += 1,
                    Ok(Ok(AclRefreshed::Failed(why))) => {
                        reload.failed += 1;
                        reload.error.get_or_insert(why);
                    }
                    // Closing, or gone meanwhile: nothing left to authorise.
                    Ok(Ok(AclRefreshed::NotConnected) | Err(_)) => {}
                    Err(_) => reload.pending += 1,
                }
            }
            reload
        })
    }
}

impl Handler<ActiveClients> for Registry {
    type Result = usize;

    fn handle(&mut self, _: ActiveClients, _: &mut Context<Self>) -> usize {
        self.clients.len()
    }
}

impl Handler<crate::messages::Gauges> for Registry {
    type Result = crate::messages::RegistryGauges;

    fn handle(&mut self, _: crate::messages::Gauges, _: &mut Context<Self>) -> Self::Result {
        crate::messages::RegistryGauges {
            clients: self.clients.len(),
            subscriptions: self.router.subscription_count(None),
            retained_messages: self.retained.len(),
            persistent_sessions: self.kept.len(),
            // O(persistent sessions), once per scrape.
            queued_messages: self.kept.values().map(|k| k.unacked.len()).sum(),
        }
    }
}

// ---- the admin API (src/http.rs) -------------------------------------------------------------

/// The `limit` items from `offset` of `items` in order, without sorting them all: each call
/// costs O(n) plus the sort of one page, so a large broker's listing does not hold up routing.
fn page_of<T: Ord>(mut items: Vec<T>, offset: usize, limit: usize) -> Vec<T> {
    if offset >= items.len() || limit == 0 {
        return Vec::new();
    }
    if offset > 0 {
        items.select_nth_unstable(offset);
    }
    let mut page = items.split_off(offset);
    if limit < page.len() {
        page.select_nth_unstable(limit);
        page.truncate(limit);
    }
    page.sort_unstable();
    page
}

impl Registry {
    fn client_summary(&self, client: &Arc<str>, entry: &Entry) -> ClientSummary {
        let info = &entry.info;
        let kept = self.kept.get(client);
        ClientSummary {
            client_id: client.to_string(),
            username: info.username.clone(),
            address: info.address.to_string(),
            protocol_version: info.protocol_version,
            connected_at_ms: info.connected_at_ms,
            keep_alive: info.keep_alive,
            persistent: kept.is_some(),
            session_expiry_interval: kept.map_or(0, |k| k.expiry_interval),
            inflight: info.inflight.load(std::sync::atomic::Ordering::Relaxed),
            subscriptions: self.router.subscription_count(Some(client)),
        }
    }
}

impl Handler<ListClients> for Registry {
    type Result = MessageResult<ListClients>;

    fn handle(&mut self, msg: ListClients, _: &mut Context<Self>) -> Self::Result {
        let ids: Vec<&Arc<str>> = self.clients.keys().collect();
        let items = page_of(ids, msg.offset, msg.limit)
            .into_iter()
            .filter_map(|id| Some(self.client_summary(id, self.clients.get(id)?)))
            .collect();
        MessageResult(Page {
            total: self.clients.len(),
            items,
        })
    }
}

impl Handler<GetClient> for Registry {
    type Result = Option<ClientSummary>;

    fn handle(&mut self, msg: GetClient, _: &mut Context<Self>) -> Self::Result {
        let (id, entry) = self.clients.get_key_value(msg.client_id.as_str())?;
        Some(self.client_summary(id, entry))
    }
}

impl Handler<ListSessions> for Registry {
    type Result = MessageResult<ListSessions>;

    fn handle(&mut self, msg: ListSessions, _: &mut Context<Self>) -> Self::Result {
        let ids: Vec<&Arc<str>> = self.kept.keys().collect();
        let items = page_of(ids, msg.offset, msg.limit)
            .into_iter()
            .filter_map(|id| {
                let kept = self.kept.get(id)?;
                let entry = self.clients.get(id);
                Some(SessionSummary {
                    client_id: id.to_string(),
                    connected: entry.is_some(),
                    expiry_interval: kept.expiry_interval,
                    expires_at_ms: kept.expires_at_ms,
                    queued_messages: kept.unacked.len(),
                    queued_bytes: kept.bytes,
                    inflight: entry.map_or(0, |e| {
                        e.info.inflight.load(std::sync::atomic::Ordering::Relaxed)
                    }),
                    subscriptions: self.router.subscription_count(Some(id)),
                })
            })
            .collect();
        MessageResult(Page {
            total: self.kept.len(),
            items,
        })
    }
}

impl Handler<ListRetained> for Registry {
    type Result = MessageResult<ListRetained>;

    fn handle(&mut self, msg: ListRetained, _: &mut Context<Self>) -> Self::Result {
        let topics: Vec<&str> = self.retained.values().map(|m| &*m.topic).collect();
        let total = topics.len();
        let items = page_of(topics, msg.offset, msg.limit)
            .into_iter()
            .filter_map(|topic| {
                let message = self.retained.get(topic)?;
                Some(RetainedSummary {
                    topic: topic.to_owned(),
                    payload_bytes: message.payload.len(),
                    qos: message.qos as u8,
                    publisher: message.publisher.to_string(),
                    expires_at_ms: message.expires_at_ms,
                })
            })
            .collect();
        MessageResult(Page { total, items })
    }
}

impl Handler<Kick> for Registry {
    type Result = ResponseFuture<Kicked>;

    /// Like a take-over's `Close`, with reason 0x98; the session logs the disconnect. A session
    /// paused on a client that does not read is not aborted (its send timeout ends it).
    fn handle(&mut self, msg: Kick, _: &mut Context<Self>) -> Self::Result {
        let Some(entry) = self.clients.get(msg.client_id.as_str()) else {
            return Box::pin(async { Kicked::NotConnected });
        };
        debug!("client {:?}: kick requested", msg.client_id);
        let close = entry.session.send(Close {
            reason: ReasonCode::AdministrativeAction,
        });
        Box::pin(async move {
            match tokio::time::timeout(TAKEOVER_WAIT, close).await {
                Ok(_) => Kicked::Closed,
                Err(_) => Kicked::Pending,
            }
        })
    }
}

#[cfg(test)]
mod admin_tests {
    use super::page_of;

    #[test]
    fn pages_are_sorted_slices_of_the_whole() {
        let items = vec![9, 3, 7, 1, 5, 8, 2, 6, 4, 0];
        assert_eq!(page_of(items.clone(), 0, 3), [0, 1, 2]);
        assert_eq!(page_of(items.clone(), 3, 4), [3, 4, 5, 6]);
        assert_eq!(page_of(items.clone(), 8, 100), [8, 9]);
        assert_eq!(page_of(items.clone(), 0, 100), (0..10).collect::<Vec<_>>());
        assert!(page_of(items.clone(), 10, 5).is_empty());
        assert!(page_of(items.clone(), 2, 0).is_empty());
        assert!(page_of(Vec::<u8>::new(), 0, 5).is_empty());
        // Every page, one after the other, is the sorted whole.
        let pages: Vec<i32> = (0..4)
            .flat_map(|p| page_of(items.clone(), p * 3, 3))
            .collect();
        assert_eq!(pages, (0..10).collect::<Vec<_>>());
    }
}
