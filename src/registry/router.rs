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
//!
//! A session keeps the routes of the last topic it published to (`RouteCache`), valid until
//! the Registry changes anything here: a publisher sending a stream to one topic takes the
//! lock once, not per message. The Registry bumps the generation under the lock before it
//! counts a message out of `InRegistry`, so a session that sees its own messages routed also
//! sees every change they caused (a `backlogged` flag set, for one).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::mpsc;

use super::subscriptions::{Route, SubscriptionTree};
use crate::message::{AppMessage, Delivery, SubscriptionIds};
use crate::mqtt::QoS;
use crate::session::{Bypass, DirectWrites};
use crate::stats::Counters;

/// A connection's delivery queue, and its bypass if it has one (see `session::bypass`).
#[derive(Clone, Debug)]
pub struct Outlet {
    pub queue: mpsc::Sender<Delivery>,
    pub bypass: Option<Arc<Bypass>>,
}

/// Where one client's deliveries go.
#[derive(Clone)]
struct Target {
    /// `None` while a persistent session has no connection, or the connection has no queue
    /// yet (see `messages::Register`): the Registry decides then.
    queue: Option<mpsc::Sender<Delivery>>,
    bypass: Option<Arc<Bypass>>,
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
    /// Bumped, under the lock, by every `update`: a session's `RouteCache` of an older
    /// generation is stale.
    generation: AtomicU64,
}

/// Most routes a session keeps between messages. A topic with more subscribers is routed
/// under the lock for every message (its deliveries cost more than that anyway): caching it in
/// every publisher would cost publishers x subscribers, a chat room of 10,000 clients 7 GB.
const CACHED_ROUTES_MAX: usize = 32;

/// The routes of the last topic a session published to, with what the targets' state was
/// then. Boxed in the session and made on its first PUBLISH: a subscriber never has one.
#[derive(Default)]
pub struct RouteCache {
    generation: u64,
    /// `None`: nothing cached (or routes that must be chosen again per message).
    topic: Option<Arc<str>>,
    routes: Vec<CachedRoute>,
    /// Room for the tree's answer, reused.
    found: Vec<Route>,
}

impl RouteCache {
    /// The topic whose routes are cached.
    pub fn topic(&self) -> Option<&Arc<str>> {
        self.topic.as_ref()
    }
}

struct CachedRoute {
    route: Route,
    target: Target,
}

impl Router {
    pub fn new(tree: SubscriptionTree) -> Router {
        Router {
            inner: Mutex::new(Routing {
                tree,
                targets: HashMap::new(),
            }),
            generation: AtomicU64::new(0),
        }
    }

    /// The lock. Nothing under it panics on purpose; were it poisoned, the state is still
    /// consistent (each update is a single map or tree operation), so it is used as it is.
    fn lock(&self) -> MutexGuard<'_, Routing> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lock, to change the subscriptions or targets: every session's cache goes stale.
    pub fn update(&self) -> MutexGuard<'_, Routing> {
        let routing = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        routing
    }

    /// The Routes of a message the Registry delivers (see `SubscriptionTree::route`).
    pub fn route(&self, topic: &str, publisher: &str, out: &mut Vec<Route>) {
        self.lock().tree.route(topic, publisher, out);
    }

    /// Subscriptions in all, or `client`'s.
    pub fn subscription_count(&self, client: Option<&str>) -> usize {
        let routing = self.lock();
        match client {
            Some(client) => routing.tree.client_count(client),
            None => routing.tree.len(),
        }
    }

    /// Routes `message` from a session: every delivery that can go straight into its client's
    /// queue goes there; the Routes left in `rest` are the Registry's to deliver. A QoS 0
    /// message for a queue that is full (but has no backlog) goes to `full` instead, with the
    /// queue, for the session to wait for room (see `Session::wait_for_room`).
    ///
    /// A delivery to an idle subscriber is written to its socket (`Bypass`), but only along
    /// cached routes: under the lock it would hold up every other publisher.
    pub fn route_direct(
        &self,
        message: &Arc<AppMessage>,
        cache: &mut RouteCache,
        rest: &mut Vec<Route>,
        full: &mut Vec<(Route, mpsc::Sender<Delivery>)>,
        counters: &Counters,
    ) {
        let fresh = cache.generation == self.generation.load(Ordering::Acquire)
            && cache.topic.as_deref() == Some(&*message.topic);
        if fresh || self.fill(message, cache, rest, full) {
            let mut direct = DirectWrites::new(counters);
            for cached in &cache.routes {
                let target = &cached.target;
                send(
                    message,
                    &cached.route,
                    target,
                    rest,
                    full,
                    Some(&mut direct),
                );
            }
        }
    }

    /// Caches the routes of `message`'s topic and their targets as they are now, and returns
    /// true. Routes that are not kept (a shared subscription's member is chosen per message;
    /// more than `CACHED_ROUTES_MAX`) are taken under the lock instead, and false returned.
    fn fill(
        &self,
        message: &Arc<AppMessage>,
        cache: &mut RouteCache,
        rest: &mut Vec<Route>,
        full: &mut Vec<(Route, mpsc::Sender<Delivery>)>,
    ) -> bool {
        let mut routing = self.lock();
        let Routing { tree, targets } = &mut *routing;
        cache.topic = None;
        cache.routes.clear();
        let reusable = tree.route(&message.topic, &message.publisher, &mut cache.found);
        let keep = reusable && cache.found.len() <= CACHED_ROUTES_MAX;
        // Neither connected nor a persistent session: nothing to deliver to.
        let found = cache
            .found
            .drain(..)
            .filter_map(|route| Some((targets.get(&route.client)?, route)));
        if keep {
            let found = found.map(|(target, route)| CachedRoute {
                route,
                target: target.clone(),
            });
            cache.routes.extend(found);
            cache.generation = self.generation.load(Ordering::Acquire);
            cache.topic = Some(message.topic.clone());
            return true;
        }
        for (target, route) in found {
            send(message, &route, target, rest, full, None);
        }
        drop(routing);
        cache.found.shrink_to(CACHED_ROUTES_MAX);
        false
    }
}

/// Puts the delivery along `route` into its client's queue if nothing the Registry holds is
/// needed; else leaves the Route to the Registry (`rest`), or a QoS 0 message for a full
/// queue to the session's wait (`full`). With `direct`, the delivery may be written to the
/// client's socket instead of queued.
fn send(
    message: &Arc<AppMessage>,
    route: &Route,
    target: &Target,
    rest: &mut Vec<Route>,
    full: &mut Vec<(Route, mpsc::Sender<Delivery>)>,
    direct: Option<&mut DirectWrites>,
) {
    let qos = message.qos.min(route.qos);
    let registry_only = target.backlogged || (target.stored && qos != QoS::AtMostOnce);
    let Some(queue) = target.queue.as_ref().filter(|_| !registry_only) else {
        rest.push(route.clone());
        return;
    };
    if let (Some(direct), Some(bypass)) = (direct, &target.bypass)
        && bypass.deliver(route, message, queue, direct)
    {
        return;
    }
    match queue.try_send(route.delivery(message)) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
        Err(mpsc::error::TrySendError::Full(_)) if message.qos == QoS::AtMostOnce => {
            full.push((route.clone(), queue.clone()));
        }
        Err(mpsc::error::TrySendError::Full(_)) => rest.push(route.clone()),
    }
}

impl Route {
    /// The delivery of `message` along this Route (a cached one: its identifiers copied).
    pub fn delivery(&self, message: &Arc<AppMessage>) -> Delivery {
        self.delivery_with(message, self.subscription_ids.iter().copied().collect())
    }

    /// The delivery of `message` along a Route used once: its identifiers taken, not copied.
    pub fn take_delivery(&mut self, message: &Arc<AppMessage>) -> Delivery {
        let ids = std::mem::take(&mut self.subscription_ids).into();
        self.delivery_with(message, ids)
    }

    fn delivery_with(&self, message: &Arc<AppMessage>, ids: SubscriptionIds) -> Delivery {
        Delivery {
            message: message.clone(),
            qos: message.qos.min(self.qos),
            retain: message.retain && self.retain_as_published,
            subscription_ids: ids,
            packet_id: None,
            dup: false,
        }
    }
}

impl Routing {
    /// A connection registered `client` (replacing an earlier connection's queue).
    pub fn connect(&mut self, client: &Arc<str>, outlet: Option<Outlet>, stored: bool) {
        let (queue, bypass) = outlet.map_or((None, None), |o| (Some(o.queue), o.bypass));
        self.targets.insert(
            client.clone(),
            Target {
                queue,
                bypass,
                stored,
                backlogged: false,
            },
        );
    }

    /// `client`'s connection opened its delivery queue.
    pub fn set_queue(&mut self, client: &str, outlet: Outlet) {
        if let Some(target) = self.targets.get_mut(client) {
            target.queue = Some(outlet.queue);
            target.bypass = outlet.bypass;
        }
    }

    /// `client`'s connection ended; a persistent session stays a target for the Registry.
    pub fn disconnect(&mut self, client: &str, stored: bool) {
        if stored {
            if let Some(target) = self.targets.get_mut(client) {
                target.queue = None;
                target.bypass = None;
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
            bypass: None,
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::mqtt::{Properties, SubscriptionOptions};
    use crate::registry::subscriptions::Subscription;

    fn message(topic: &str) -> Arc<AppMessage> {
        Arc::new(AppMessage {
            topic: topic.into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
            expires_at_ms: None,
            publisher: "publisher".into(),
        })
    }

    /// A Router with `subscribers` connected clients on topic `t`, and their queues.
    fn router(subscribers: usize) -> (Router, Vec<mpsc::Receiver<Delivery>>) {
        let router = Router::default();
        let mut queues = Vec::new();
        let mut routing = router.update();
        for n in 0..subscribers {
            let client: Arc<str> = format!("s{n}").into();
            let subscription = Subscription {
                options: SubscriptionOptions::default(),
                identifier: None,
            };
            routing.tree.subscribe(&client, "t", subscription);
            let (sender, receiver) = mpsc::channel(4);
            routing.connect(
                &client,
                Some(Outlet {
                    queue: sender,
                    bypass: None,
                }),
                false,
            );
            queues.push(receiver);
        }
        drop(routing);
        (router, queues)
    }

    #[test]
    fn routes_are_cached_until_the_registry_changes_anything() {
        let (router, mut queues) = router(2);
        let counters = Counters::default();
        let mut cache = RouteCache::default();
        let (mut rest, mut full) = (Vec::new(), Vec::new());
        router.route_direct(&message("t"), &mut cache, &mut rest, &mut full, &counters);
        assert_eq!(cache.topic().map(|t| &**t), Some("t"));
        let generation = cache.generation;
        router.route_direct(&message("t"), &mut cache, &mut rest, &mut full, &counters);
        assert_eq!(cache.generation, generation, "used as it was");
        router.update().set_backlogged("s0", true);
        router.route_direct(&message("t"), &mut cache, &mut rest, &mut full, &counters);
        assert_ne!(cache.generation, generation, "filled again");
        assert_eq!(rest.len(), 1, "s0 is left to the Registry");
        assert!(full.is_empty());
        let delivered: Vec<usize> = queues.iter_mut().map(|q| q.len()).collect();
        assert_eq!(delivered, [2, 3]);
    }

    #[test]
    fn a_topic_with_many_subscribers_is_not_kept() {
        let (router, _queues) = router(CACHED_ROUTES_MAX + 1);
        let counters = Counters::default();
        let mut cache = RouteCache::default();
        let (mut rest, mut full) = (Vec::new(), Vec::new());
        router.route_direct(&message("t"), &mut cache, &mut rest, &mut full, &counters);
        assert!(rest.is_empty() && full.is_empty(), "all delivered");
        assert!(cache.topic().is_none());
        assert!(cache.routes.is_empty() && cache.routes.capacity() <= CACHED_ROUTES_MAX);
        assert!(cache.found.capacity() <= CACHED_ROUTES_MAX);
    }
}
