//! The subscription tree: which clients a PUBLISH goes to (§4.7 topic filters, §4.8.2 shared
//! subscriptions). A pure data structure owned by the Registry actor.
//!
//! # The trie
//!
//! Filters are stored one topic level per node, like Mosquitto's `subs.c`. Every node has:
//!
//! - `children`: literal levels, in a hash map (SipHash: topics are chosen by clients, so a
//!   seeded hash keeps an attacker from building collisions);
//! - `plus`: the one child reached through a `+` level;
//! - `exact`: the subscriptions whose filter ends at this node;
//! - `hash`: the subscriptions whose filter ends with `/#` at this node (`#` alone: the root's).
//!
//! ```text
//! root ─┬─ "sport" ─┬─ "tennis" ── "player1"   exact: sport/tennis/player1
//!       │           │                          hash:  sport/tennis/player1/#
//!       │           └─ + ── "player1"          exact: sport/+/player1
//!       ├─ + ── (node)                         exact: +        hash: +/#
//!       └─ "$SYS"                              hash:  $SYS/#
//! root                                         hash:  #
//! ```
//!
//! A leaf (`exact` or `hash`) holds the ordinary subscriptions by client and the shared
//! subscriptions by ShareName: `$share/g/sport/+` is filed under the `sport/+` node, group `g`.
//!
//! # Matching a topic
//!
//! The topic is walked level by level with an explicit worklist of (node, offset of the next
//! level), never by recursion, since a topic may have 65,000 levels:
//!
//! - at every node reached, the `hash` leaf matches: the filter's levels so far matched and `#`
//!   matches any number of further levels, including none, so `sport/#` matches `sport`
//!   (§4.7.1.2);
//! - when the topic has no level left, the `exact` leaf matches;
//! - otherwise the next level follows the literal child of that name and the `+` child
//!   (`+` matches an empty level too: `+/+` matches `/finance`);
//! - at the root only, a topic starting with '$' follows neither `+` nor `#`, so `#` and
//!   `+/monitor/Clients` do not match `$SYS/monitor/Clients` [MQTT-4.7.2-1].
//!
//! Each node is reached at most once (by the one path that spells its filter), so the work is
//! bounded by the number of filter prefixes that match the topic: a topic costs O(levels) hash
//! look-ups however many subscriptions exist. Nodes live in an arena (`Vec`) addressed by
//! index with a parent link, so that removal prunes empty nodes upwards without recursion, the
//! worklist holds no borrows and is reused from call to call, and dropping a 65,000-level chain
//! is not a recursive drop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::mqtt::topic::split_shared;
use crate::mqtt::{QoS, SubscriptionOptions};

/// One client's subscription to one filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    /// The Subscription Identifier of the SUBSCRIBE that made (or last replaced) it.
    pub identifier: Option<u32>,
}

/// One delivery decided by routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub client: Arc<str>,
    /// Highest granted QoS among the client's matching subscriptions; the caller takes the
    /// minimum with the message's QoS.
    pub qos: QoS,
    /// True if any matching subscription has Retain As Published.
    pub retain_as_published: bool,
    /// Every matching Subscription Identifier, each once [MQTT-3.3.4-3..5].
    pub subscription_ids: Vec<u32>,
}

impl Route {
    fn new(client: &Arc<str>, sub: &Subscription) -> Route {
        Route {
            client: client.clone(),
            qos: sub.options.qos,
            retain_as_published: sub.options.retain_as_published,
            subscription_ids: sub.identifier.into_iter().collect(),
        }
    }

    /// Folds in another matching subscription of the same client [MQTT-3.3.4-2].
    fn merge(&mut self, sub: &Subscription) {
        self.qos = self.qos.max(sub.options.qos);
        self.retain_as_published |= sub.options.retain_as_published;
        if let Some(id) = sub.identifier
            && !self.subscription_ids.contains(&id)
        {
            self.subscription_ids.push(id);
        }
    }
}

type NodeId = usize;
const ROOT: NodeId = 0;

/// How a node hangs from its parent, so that pruning can unlink it.
#[derive(Default)]
enum Edge {
    /// The root, and free arena slots.
    #[default]
    None,
    Plus,
    Literal(Arc<str>),
}

#[derive(Default)]
struct Node {
    parent: NodeId,
    edge: Edge,
    children: HashMap<Arc<str>, NodeId>,
    plus: Option<NodeId>,
    /// Boxed: most nodes are inner levels with neither leaf.
    exact: Option<Box<Leaf>>,
    hash: Option<Box<Leaf>>,
}

impl Node {
    fn leaf(&mut self, hash: bool) -> &mut Option<Box<Leaf>> {
        if hash {
            &mut self.hash
        } else {
            &mut self.exact
        }
    }

    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.exact.is_none()
            && self.hash.is_none()
    }
}

/// The subscriptions to one filter.
#[derive(Default)]
struct Leaf {
    subs: HashMap<Arc<str>, Subscription>,
    groups: HashMap<Box<str>, SharedGroup>,
}

/// The members of one (ShareName, filter) pair, in subscription order.
#[derive(Default)]
struct SharedGroup {
    /// Keyed by a sequence number given at first subscription; re-subscribing keeps it.
    members: BTreeMap<u64, (Arc<str>, Subscription)>,
    seq_of: HashMap<Arc<str>, u64>,
    next_seq: u64,
    /// The next pick is the first member whose sequence number is at least this.
    cursor: u64,
}

impl SharedGroup {
    /// Returns true if `client` was already a member (its options are replaced).
    fn join(&mut self, client: &Arc<str>, sub: Subscription) -> bool {
        if let Some(seq) = self.seq_of.get(&**client) {
            if let Some(member) = self.members.get_mut(seq) {
                member.1 = sub;
            }
            return true;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.seq_of.insert(client.clone(), seq);
        self.members.insert(seq, (client.clone(), sub));
        false
    }

    fn leave(&mut self, client: &str) -> bool {
        match self.seq_of.remove(client) {
            Some(seq) => self.members.remove(&seq).is_some(),
            None => false,
        }
    }

    /// Round-robin: the member after the one picked last, wrapping around. Members that
    /// join or leave in between do not disturb the rotation of the others.
    fn pick(&mut self) -> Option<&(Arc<str>, Subscription)> {
        let seq = *self
            .members
            .range(self.cursor..)
            .next()
            .or_else(|| self.members.first_key_value())?
            .0;
        self.cursor = seq + 1;
        self.members.get(&seq)
    }
}

impl Leaf {
    fn is_empty(&self) -> bool {
        self.subs.is_empty() && self.groups.is_empty()
    }
}

/// All subscriptions of all sessions, searchable by topic.
pub struct SubscriptionTree {
    nodes: Vec<Node>,
    free: Vec<NodeId>,
    /// Each client's filters exactly as subscribed (`$share/...` included), so that a session's
    /// end removes its subscriptions without searching the tree.
    by_client: HashMap<Arc<str>, HashSet<Box<str>>>,
    len: usize,
    /// Scratch for `route`, kept to reuse the allocations: the worklist, the matching leaves
    /// that have shared groups, and each client's index in `out` once there are too many
    /// Routes to find a client's by scanning.
    worklist: Vec<(NodeId, Option<usize>)>,
    shared: Vec<(NodeId, bool)>,
    merge: HashMap<Arc<str>, usize>,
}

impl Default for SubscriptionTree {
    fn default() -> Self {
        SubscriptionTree {
            nodes: vec![Node::default()],
            free: Vec::new(),
            by_client: HashMap::new(),
            len: 0,
            worklist: Vec::new(),
            shared: Vec::new(),
            merge: HashMap::new(),
        }
    }
}

/// Splits a non-shared filter into the levels that lead to its node, and whether it ends in
/// `#` (then the subscription goes to that node's `hash` leaf). `None`: the root itself.
fn split_hash(filter: &str) -> (Option<&str>, bool) {
    if filter == "#" {
        (None, true)
    } else if let Some(path) = filter.strip_suffix("/#") {
        (Some(path), true)
    } else {
        (Some(filter), false)
    }
}

/// `(ShareName, filter)`; no ShareName for an ordinary subscription.
fn split_group(filter: &str) -> (Option<&str>, &str) {
    match split_shared(filter) {
        Some((group, inner)) => (Some(group), inner),
        None => (None, filter),
    }
}

impl SubscriptionTree {
    /// Adds or replaces `client`'s subscription to `filter` [MQTT-3.8.4-3]. `filter` has passed
    /// `validate_topic_filter` (it may be `$share/{ShareName}/{filter}`). Returns true if the
    /// client already had that exact filter (Retain Handling 1 needs it).
    pub fn subscribe(&mut self, client: &Arc<str>, filter: &str, sub: Subscription) -> bool {
        let (group, inner) = split_group(filter);
        let (path, hash) = split_hash(inner);
        let id = self.insert_path(path);
        let leaf = self.nodes[id].leaf(hash).get_or_insert_with(Box::default);
        let existed = match group {
            None => leaf.subs.insert(client.clone(), sub).is_some(),
            Some(group) => match leaf.groups.get_mut(group) {
                Some(members) => members.join(client, sub),
                None => leaf
                    .groups
                    .entry(group.into())
                    .or_default()
                    .join(client, sub),
            },
        };
        if !existed {
            self.len += 1;
            self.by_client
                .entry(client.clone())
                .or_default()
                .insert(filter.into());
        }
        existed
    }

    /// Removes `client`'s subscription to `filter`; returns true if it existed.
    pub fn unsubscribe(&mut self, client: &str, filter: &str) -> bool {
        let Some(filters) = self.by_client.get_mut(client) else {
            return false;
        };
        if !filters.remove(filter) {
            return false;
        }
        if filters.is_empty() {
            self.by_client.remove(client);
        }
        self.remove_from_tree(client, filter);
        true
    }

    /// Removes every subscription of `client` (its session ended): O(its filters × levels).
    pub fn remove_client(&mut self, client: &str) {
        if let Some(filters) = self.by_client.remove(client) {
            for filter in &filters {
                self.remove_from_tree(client, filter);
            }
        }
    }

    /// Number of subscriptions `client` holds.
    pub fn client_count(&self, client: &str) -> usize {
        self.by_client.get(client).map_or(0, HashSet::len)
    }

    /// Number of subscriptions of all clients.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends to `out` the deliveries of a message published on `topic` (a valid Topic Name)
    /// by the client `publisher`:
    ///
    /// - ordinary subscriptions give ONE Route per client, merging all of that client's
    ///   matching subscriptions as described on [`Route`]; a subscription with No Local is
    ///   skipped when the client is the publisher [MQTT-3.8.3-3];
    /// - each matching shared subscription, i.e. (ShareName, filter) pair, gives one Route to
    ///   one of its members, separate from any other Route of that client. Members are chosen
    ///   round-robin in subscription order (re-subscribing keeps a member's place): each
    ///   message goes to the member after the one that got the previous message of that
    ///   group, wrapping around. No Local is not looked at: it is a Protocol Error on a shared
    ///   subscription [MQTT-3.8.3-4], which SUBSCRIBE handling rejects.
    ///
    /// Costs O(levels of `topic` + matching filter prefixes + deliveries); allocates only
    /// for `out` and the identifiers in it. Returns false if a shared subscription matched:
    /// the next message on `topic` may then take other Routes with no change to the tree.
    pub fn route(&mut self, topic: &str, publisher: &str, out: &mut Vec<Route>) -> bool {
        let dollar = topic.starts_with('$');
        let mut merger = Merger {
            start: out.len(),
            map: &mut self.merge,
        };
        self.worklist.push((ROOT, Some(0)));
        while let Some((id, pos)) = self.worklist.pop() {
            // [MQTT-4.7.2-1]: '$' topics are not matched by a first-level wildcard.
            let wildcards = !(dollar && id == ROOT);
            let node = &self.nodes[id];
            let mut matched = |leaf: &Leaf, hash: bool| {
                merger.deliver(leaf, publisher, out);
                if !leaf.groups.is_empty() {
                    self.shared.push((id, hash));
                }
            };
            if wildcards && let Some(leaf) = &node.hash {
                matched(leaf, true);
            }
            let Some(pos) = pos else {
                if let Some(leaf) = &node.exact {
                    matched(leaf, false);
                }
                continue;
            };
            let rest = &topic[pos..];
            let (level, next) = match rest.find('/') {
                Some(i) => (&rest[..i], Some(pos + i + 1)),
                None => (rest, None),
            };
            if let Some(&child) = node.children.get(level) {
                self.worklist.push((child, next));
            }
            if wildcards && let Some(child) = node.plus {
                self.worklist.push((child, next));
            }
        }
        merger.map.clear();
        let unshared = self.shared.is_empty();
        // Shared Routes go after the ordinary ones so that merging never sees them.
        for (id, hash) in self.shared.drain(..) {
            let Some(leaf) = self.nodes[id].leaf(hash).as_deref_mut() else {
                continue;
            };
            for group in leaf.groups.values_mut() {
                if let Some((client, sub)) = group.pick() {
                    out.push(Route::new(client, sub));
                }
            }
        }
        unshared
    }

    /// The node for `path`, created as needed.
    fn insert_path(&mut self, path: Option<&str>) -> NodeId {
        let mut id = ROOT;
        for level in path.into_iter().flat_map(|p| p.split('/')) {
            id = if level == "+" {
                match self.nodes[id].plus {
                    Some(child) => child,
                    None => {
                        let child = self.alloc(id, Edge::Plus);
                        self.nodes[id].plus = Some(child);
                        child
                    }
                }
            } else {
                match self.nodes[id].children.get(level) {
                    Some(&child) => child,
                    None => {
                        let key: Arc<str> = level.into();
                        let child = self.alloc(id, Edge::Literal(key.clone()));
                        self.nodes[id].children.insert(key, child);
                        child
                    }
                }
            };
        }
        id
    }

    fn find_path(&self, path: Option<&str>) -> Option<NodeId> {
        let mut id = ROOT;
        for level in path.into_iter().flat_map(|p| p.split('/')) {
            let node = &self.nodes[id];
            id = if level == "+" {
                node.plus?
            } else {
                *node.children.get(level)?
            };
        }
        Some(id)
    }

    fn alloc(&mut self, parent: NodeId, edge: Edge) -> NodeId {
        let node = Node {
            parent,
            edge,
            ..Node::default()
        };
        match self.free.pop() {
            Some(id) => {
                self.nodes[id] = node;
                id
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        }
    }

    /// Removes the subscription from its leaf; `by_client` has already been updated.
    fn remove_from_tree(&mut self, client: &str, filter: &str) {
        let (group, inner) = split_group(filter);
        let (path, hash) = split_hash(inner);
        let Some(id) = self.find_path(path) else {
            return;
        };
        let slot = self.nodes[id].leaf(hash);
        let Some(leaf) = slot.as_deref_mut() else {
            return;
        };
        let removed = match group {
            None => leaf.subs.remove(client).is_some(),
            Some(group) => match leaf.groups.get_mut(group) {
                Some(members) => {
                    let removed = members.leave(client);
                    if members.members.is_empty() {
                        leaf.groups.remove(group);
                    }
                    removed
                }
                None => false,
            },
        };
        if leaf.is_empty() {
            *slot = None;
        }
        if removed {
            self.len -= 1;
        }
        self.prune(id);
    }

    /// Unlinks and frees `id` and then its ancestors for as long as they are empty.
    fn prune(&mut self, mut id: NodeId) {
        while id != ROOT && self.nodes[id].is_empty() {
            let node = std::mem::take(&mut self.nodes[id]);
            let parent = &mut self.nodes[node.parent];
            match node.edge {
                Edge::Plus => parent.plus = None,
                Edge::Literal(level) => {
                    parent.children.remove(&level);
                }
                Edge::None => {}
            }
            self.free.push(id);
            id = node.parent;
        }
    }

    /// Nodes in use besides the root.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        self.nodes.len() - self.free.len() - 1
    }
}

/// Up to this many ordinary Routes in one `route` call, a client's Route is found by a linear
/// scan (no hashing, nothing to clear: the usual case); beyond it, through a map.
const SCAN_LIMIT: usize = 8;

/// Merges each client's ordinary subscriptions into one Route during a `route` call.
struct Merger<'a> {
    /// Where this call's Routes start in `out`.
    start: usize,
    /// Client -> index in `out`. Empty while `out[start..]` is short; once filled, it covers
    /// all of `out[start..]`.
    map: &'a mut HashMap<Arc<str>, usize>,
}

impl Merger<'_> {
    /// Adds the ordinary subscriptions of one matching leaf to `out`.
    fn deliver(&mut self, leaf: &Leaf, publisher: &str, out: &mut Vec<Route>) {
        for (client, sub) in &leaf.subs {
            if sub.options.no_local && **client == *publisher {
                continue;
            }
            let ours = &out[self.start..];
            let found = if self.map.is_empty() && ours.len() <= SCAN_LIMIT {
                ours.iter().position(|r| r.client == *client)
            } else {
                if self.map.is_empty() {
                    self.map
                        .extend(ours.iter().enumerate().map(|(i, r)| (r.client.clone(), i)));
                }
                self.map.get(&**client).copied()
            };
            match found {
                Some(i) => out[self.start + i].merge(sub),
                None => {
                    if !self.map.is_empty() {
                        self.map.insert(client.clone(), ours.len());
                    }
                    out.push(Route::new(client, sub));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use proptest::prelude::*;

    use super::*;
    use crate::mqtt::RetainHandling;
    use crate::mqtt::topic::matches;

    fn sub(qos: u8, id: Option<u32>) -> Subscription {
        Subscription {
            options: SubscriptionOptions {
                qos: QoS::from_u8(qos).expect("valid QoS"),
                ..SubscriptionOptions::default()
            },
            identifier: id,
        }
    }

    fn client(name: &str) -> Arc<str> {
        name.into()
    }

    /// Routes sorted by client, with sorted identifiers: the order is not part of the contract.
    fn route(tree: &mut SubscriptionTree, topic: &str, publisher: &str) -> Vec<Route> {
        let mut out = Vec::new();
        tree.route(topic, publisher, &mut out);
        normalize(out)
    }

    fn normalize(mut routes: Vec<Route>) -> Vec<Route> {
        for r in &mut routes {
            r.subscription_ids.sort_unstable();
        }
        routes.sort_by(|a, b| {
            (&a.client, a.qos, a.retain_as_published, &a.subscription_ids).cmp(&(
                &b.client,
                b.qos,
                b.retain_as_published,
                &b.subscription_ids,
            ))
        });
        routes
    }

    fn clients(tree: &mut SubscriptionTree, topic: &str) -> Vec<String> {
        route(tree, topic, "publisher")
            .into_iter()
            .map(|r| r.client.to_string())
            .collect()
    }

    #[test]
    fn spec_examples() {
        // §4.7.1.2, §4.7.1.3, §4.7.2: one client per filter.
        let filters = [
            "sport/tennis/player1/#",
            "sport/#",
            "sport/tennis/#",
            "sport/+",
            "sport/tennis/+",
            "+/+",
            "/+",
            "+",
            "#",
            "$SYS/#",
            "+/monitor/Clients",
            "$SYS/monitor/+",
        ];
        let mut tree = SubscriptionTree::default();
        for f in filters {
            tree.subscribe(&client(f), f, sub(0, None));
        }
        assert_eq!(tree.len(), filters.len());
        let cases: &[(&str, &[&str])] = &[
            (
                "sport/tennis/player1",
                &[
                    "#",
                    "sport/#",
                    "sport/tennis/#",
                    "sport/tennis/+",
                    "sport/tennis/player1/#",
                ],
            ),
            (
                "sport/tennis/player1/ranking",
                &["#", "sport/#", "sport/tennis/#", "sport/tennis/player1/#"],
            ),
            ("sport", &["#", "+", "sport/#"]),
            ("sport/", &["#", "+/+", "sport/#", "sport/+"]),
            ("/finance", &["#", "+/+", "/+"]),
            ("$SYS/monitor/Clients", &["$SYS/#", "$SYS/monitor/+"]),
            ("$SYS/x", &["$SYS/#"]),
            ("$SYS", &["$SYS/#"]),
            ("other/monitor/Clients", &["#", "+/monitor/Clients"]),
        ];
        for (topic, expected) in cases {
            let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
            expected.sort();
            assert_eq!(clients(&mut tree, topic), expected, "{topic}");
            for f in filters {
                assert_eq!(
                    expected.iter().any(|e| e == f),
                    matches(f, topic),
                    "{f} {topic}"
                );
            }
        }
    }

    #[test]
    fn overlapping_subscriptions_merge() {
        let mut tree = SubscriptionTree::default();
        let c = client("c");
        tree.subscribe(&c, "a/b", sub(0, Some(1)));
        tree.subscribe(&c, "a/+", sub(2, Some(2)));
        tree.subscribe(&c, "#", sub(1, None));
        let mut rap = sub(0, Some(1));
        rap.options.retain_as_published = true;
        tree.subscribe(&c, "+/b", rap);
        tree.subscribe(&client("d"), "a/b", sub(1, Some(7)));
        assert_eq!(tree.client_count("c"), 4);
        assert_eq!(
            route(&mut tree, "a/b", "x"),
            vec![
                Route {
                    client: c.clone(),
                    qos: QoS::ExactlyOnce,
                    retain_as_published: true,
                    // Id 1 is on two matching subscriptions but listed once.
                    subscription_ids: vec![1, 2],
                },
                Route {
                    client: client("d"),
                    qos: QoS::AtLeastOnce,
                    retain_as_published: false,
                    subscription_ids: vec![7],
                },
            ]
        );
        // `out` is appended to, and merging only looks at this call's Routes.
        let mut out = vec![Route::new(&c, &sub(0, None))];
        tree.route("z", "x", &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].qos, QoS::AtLeastOnce);
    }

    #[test]
    fn many_clients_merge_through_the_map() {
        // More Routes than SCAN_LIMIT: merging switches from scanning to the map midway.
        let mut tree = SubscriptionTree::default();
        let names: Vec<Arc<str>> = (0..3 * SCAN_LIMIT)
            .map(|i| client(&format!("c{i}")))
            .collect();
        for (i, c) in names.iter().enumerate() {
            let id = u32::try_from(i).expect("small");
            tree.subscribe(c, "m/+", sub(0, Some(id)));
            tree.subscribe(c, "m/#", sub(1, Some(id)));
            tree.subscribe(c, "#", sub(2, Some(1000)));
            tree.subscribe(c, "$share/g/m/x", sub(0, None));
        }
        let mut out = vec![Route::new(&names[0], &sub(0, None))];
        tree.route("m/x", "p", &mut out);
        assert_eq!(out.len(), 1 + names.len() + 1);
        let mut expected: Vec<Route> = names
            .iter()
            .enumerate()
            .map(|(i, c)| Route {
                client: c.clone(),
                qos: QoS::ExactlyOnce,
                retain_as_published: false,
                subscription_ids: vec![u32::try_from(i).expect("small"), 1000],
            })
            .collect();
        expected.push(Route::new(&names[0], &sub(0, None)));
        assert_eq!(normalize(out[1..].to_vec()), normalize(expected));
    }

    #[test]
    fn no_local() {
        let mut tree = SubscriptionTree::default();
        let mut nl = sub(1, Some(1));
        nl.options.no_local = true;
        tree.subscribe(&client("a"), "t", nl);
        tree.subscribe(&client("b"), "t", nl);
        tree.subscribe(&client("b"), "#", sub(0, Some(2)));
        assert_eq!(clients(&mut tree, "t"), ["a", "b"]);
        assert!(route(&mut tree, "t", "a").iter().all(|r| &*r.client != "a"));
        // b's No Local subscription is skipped, its other one still matches.
        assert_eq!(
            route(&mut tree, "t", "b"),
            [
                Route {
                    client: client("a"),
                    qos: QoS::AtLeastOnce,
                    retain_as_published: false,
                    subscription_ids: vec![1],
                },
                Route {
                    client: client("b"),
                    qos: QoS::AtMostOnce,
                    retain_as_published: false,
                    subscription_ids: vec![2],
                },
            ]
        );
    }

    #[test]
    fn resubscribe_replaces() {
        let mut tree = SubscriptionTree::default();
        let c = client("c");
        let mut first = sub(0, Some(1));
        first.options.retain_handling = RetainHandling::SendIfNew;
        assert!(!tree.subscribe(&c, "a/#", first));
        assert!(tree.subscribe(&c, "a/#", sub(2, None)));
        assert!(!tree.subscribe(&c, "$share/g/a/#", sub(1, None)));
        assert!(tree.subscribe(&c, "$share/g/a/#", sub(2, None)));
        assert_eq!(tree.len(), 2);
        assert_eq!(tree.client_count("c"), 2);
        let routes = route(&mut tree, "a", "x");
        assert_eq!(routes.len(), 2);
        assert!(
            routes
                .iter()
                .all(|r| r.qos == QoS::ExactlyOnce && r.subscription_ids.is_empty())
        );
    }

    #[test]
    fn unsubscribe_and_remove_client_prune() {
        let mut tree = SubscriptionTree::default();
        let (a, b) = (client("a"), client("b"));
        for f in [
            "x/y/z",
            "x/+/z",
            "x/#",
            "#",
            "+",
            "$share/g/x/y",
            "/",
            "x/y/z/w",
        ] {
            tree.subscribe(&a, f, sub(0, None));
            tree.subscribe(&b, f, sub(0, None));
        }
        assert_eq!(tree.len(), 16);
        assert!(!tree.unsubscribe("a", "x/y"));
        assert!(!tree.unsubscribe("nobody", "x/y/z"));
        assert!(tree.unsubscribe("a", "x/y/z"));
        assert!(!tree.unsubscribe("a", "x/y/z"));
        assert!(tree.unsubscribe("a", "$share/g/x/y"));
        assert_eq!(tree.client_count("a"), 6);
        tree.remove_client("a");
        assert_eq!(tree.client_count("a"), 0);
        assert_eq!(tree.len(), 8);
        // b's four matching ordinary subscriptions merged into one Route.
        assert_eq!(clients(&mut tree, "x/y/z"), ["b"]);
        tree.remove_client("b");
        tree.remove_client("b");
        assert_eq!((tree.len(), tree.node_count()), (0, 0));
        assert!(tree.is_empty() && tree.by_client.is_empty());
        assert!(route(&mut tree, "x/y/z", "p").is_empty());
        // Freed nodes are reused.
        let arena = tree.nodes.len();
        tree.subscribe(&a, "q/r", sub(0, None));
        assert_eq!(tree.nodes.len(), arena);
    }

    #[test]
    fn routes_of_a_shared_subscription_are_not_reusable() {
        let mut tree = SubscriptionTree::default();
        tree.subscribe(&client("a"), "s/+", sub(0, None));
        tree.subscribe(&client("m"), "$share/g/s/t", sub(0, None));
        let mut out = Vec::new();
        assert!(
            tree.route("s/u", "p", &mut out),
            "ordinary subscriptions only"
        );
        assert!(
            !tree.route("s/t", "p", &mut out),
            "a group's member is picked"
        );
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn shared_round_robin() {
        let mut tree = SubscriptionTree::default();
        for name in ["m1", "m2", "m3"] {
            tree.subscribe(&client(name), "$share/g/s/+", sub(1, None));
        }
        tree.subscribe(&client("o"), "$share/other/s/#", sub(1, None));
        let picks = |tree: &mut SubscriptionTree, n| {
            (0..n)
                .map(|_| {
                    let mut out = Vec::new();
                    tree.route("s/t", "p", &mut out);
                    assert_eq!(out.len(), 2, "one per group");
                    out.into_iter()
                        .map(|r| r.client.to_string())
                        .find(|c| c != "o")
                        .expect("a member of g")
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            picks(&mut tree, 7),
            ["m1", "m2", "m3", "m1", "m2", "m3", "m1"]
        );
        // m2 is next; it leaves, so m3 follows; a re-subscribe keeps m1's place.
        tree.unsubscribe("m2", "$share/g/s/+");
        tree.subscribe(&client("m1"), "$share/g/s/+", sub(2, None));
        tree.subscribe(&client("m4"), "$share/g/s/+", sub(1, None));
        assert_eq!(picks(&mut tree, 4), ["m3", "m4", "m1", "m3"]);
        // g does not match "s": no pick (`s/#` does).
        assert_eq!(clients(&mut tree, "s"), ["o"]);
        assert_eq!(picks(&mut tree, 1), ["m4"]);
    }

    #[test]
    fn shared_and_ordinary_routes_are_separate() {
        let mut tree = SubscriptionTree::default();
        let c = client("c");
        tree.subscribe(&c, "$share/g/a", sub(1, Some(1)));
        tree.subscribe(&c, "a", sub(0, Some(2)));
        tree.subscribe(&c, "+", sub(2, Some(3)));
        let routes = route(&mut tree, "a", "c");
        assert_eq!(
            routes
                .iter()
                .map(|r| (r.qos, r.subscription_ids.clone()))
                .collect::<Vec<_>>(),
            [(QoS::AtLeastOnce, vec![1]), (QoS::ExactlyOnce, vec![2, 3])]
        );
    }

    #[test]
    fn deep_topics_do_not_overflow_the_stack() {
        let mut tree = SubscriptionTree::default();
        // 65,000 empty levels, and 32,768 levels of '+' then '#'.
        let deep = "/".repeat(64_999);
        let wild = "+/".repeat(32_767) + "#";
        tree.subscribe(&client("lit"), &deep, sub(0, None));
        tree.subscribe(&client("wild"), &wild, sub(0, None));
        tree.subscribe(&client("plus"), &("+/".repeat(64_999) + "+"), sub(0, None));
        assert_eq!(clients(&mut tree, &deep), ["lit", "plus", "wild"]);
        assert_eq!(clients(&mut tree, &"/".repeat(40_000)), ["wild"]);
        assert!(tree.unsubscribe("lit", &deep));
        assert!(tree.unsubscribe("wild", &wild));
        tree.remove_client("plus");
        assert_eq!(tree.node_count(), 0);
        // Dropping a deep tree does not recurse either.
        tree.subscribe(&client("lit"), &deep, sub(0, None));
        drop(tree);
    }

    // ---- the proptest against a naive model ----

    #[derive(Debug, Clone)]
    enum Op {
        Subscribe(usize, String, Subscription),
        Unsubscribe(usize, String),
        RemoveClient(usize),
        Route(String, usize),
    }

    const CLIENTS: [&str; 4] = ["c0", "c1", "c2", "c3"];

    fn topic_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(&["a", "b", "", "$s"][..]), 1..5)
            .prop_map(|levels| levels.join("/"))
    }

    fn filter_strategy() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop::sample::select(&["a", "b", "", "+", "$s"][..]), 0..4),
            any::<bool>(),
            prop::sample::select(&[None, Some("g1"), Some("g2")][..]),
        )
            .prop_map(|(mut levels, hash, group)| {
                if hash || levels.is_empty() {
                    levels.push("#");
                }
                let filter = levels.join("/");
                match group {
                    Some(g) => format!("$share/{g}/{filter}"),
                    None => filter,
                }
            })
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        let client = 0..CLIENTS.len();
        prop_oneof![
            4 => (client.clone(), filter_strategy(), 0..3u8, any::<bool>(), any::<bool>(), prop::option::of(1..4u32))
                .prop_map(|(c, f, qos, no_local, rap, id)| {
                    let mut s = sub(qos, id);
                    // No Local on a shared subscription is rejected before it gets here.
                    s.options.no_local = no_local && split_shared(&f).is_none();
                    s.options.retain_as_published = rap;
                    Op::Subscribe(c, f, s)
                }),
            1 => (client.clone(), filter_strategy()).prop_map(|(c, f)| Op::Unsubscribe(c, f)),
            1 => client.clone().prop_map(Op::RemoveClient),
            4 => (topic_strategy(), client).prop_map(|(t, c)| Op::Route(t, c)),
        ]
    }

    #[derive(Default)]
    struct ModelGroup {
        members: Vec<(u64, usize, Subscription)>,
        next_seq: u64,
        cursor: u64,
    }

    /// Every subscription in plain maps; routing scans them all with `matches`.
    #[derive(Default)]
    struct Model {
        ordinary: BTreeMap<(usize, String), Subscription>,
        groups: BTreeMap<(String, String), ModelGroup>,
    }

    impl Model {
        fn subscribe(&mut self, c: usize, filter: &str, s: Subscription) -> bool {
            match split_shared(filter) {
                None => self.ordinary.insert((c, filter.into()), s).is_some(),
                Some((g, f)) => {
                    let group = self.groups.entry((g.into(), f.into())).or_default();
                    if let Some(m) = group.members.iter_mut().find(|m| m.1 == c) {
                        m.2 = s;
                        return true;
                    }
                    group.members.push((group.next_seq, c, s));
                    group.next_seq += 1;
                    false
                }
            }
        }

        fn unsubscribe(&mut self, c: usize, filter: &str) -> bool {
            match split_shared(filter) {
                None => self.ordinary.remove(&(c, filter.into())).is_some(),
                Some((g, f)) => {
                    let key = (g.to_string(), f.to_string());
                    let Some(group) = self.groups.get_mut(&key) else {
                        return false;
                    };
                    let before = group.members.len();
                    group.members.retain(|m| m.1 != c);
                    let removed = group.members.len() != before;
                    if group.members.is_empty() {
                        self.groups.remove(&key);
                    }
                    removed
                }
            }
        }

        fn filters_of(&self, c: usize) -> Vec<String> {
            let mut filters: Vec<String> = self
                .ordinary
                .keys()
                .filter(|k| k.0 == c)
                .map(|k| k.1.clone())
                .collect();
            for ((g, f), group) in &self.groups {
                if group.members.iter().any(|m| m.1 == c) {
                    filters.push(format!("$share/{g}/{f}"));
                }
            }
            filters
        }

        fn len(&self) -> usize {
            self.ordinary.len() + self.groups.values().map(|g| g.members.len()).sum::<usize>()
        }

        fn route(&mut self, topic: &str, publisher: usize) -> Vec<Route> {
            let mut merged: BTreeMap<usize, Route> = BTreeMap::new();
            for ((c, f), s) in &self.ordinary {
                if !matches(f, topic) || (s.options.no_local && *c == publisher) {
                    continue;
                }
                let name = client(CLIENTS[*c]);
                merged
                    .entry(*c)
                    .and_modify(|r| r.merge(s))
                    .or_insert_with(|| Route::new(&name, s));
            }
            let mut routes: Vec<Route> = merged.into_values().collect();
            for ((_, f), group) in &mut self.groups {
                if !matches(f, topic) {
                    continue;
                }
                let i = group
                    .members
                    .iter()
                    .position(|m| m.0 >= group.cursor)
                    .unwrap_or(0);
                let (seq, c, s) = group.members[i];
                group.cursor = seq + 1;
                routes.push(Route::new(&client(CLIENTS[c]), &s));
            }
            normalize(routes)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn route_matches_naive_model(ops in prop::collection::vec(op_strategy(), 1..60)) {
            let mut tree = SubscriptionTree::default();
            let mut model = Model::default();
            let names: Vec<Arc<str>> = CLIENTS.iter().map(|&c| client(c)).collect();
            for op in ops {
                match op {
                    Op::Subscribe(c, f, s) => {
                        prop_assert_eq!(tree.subscribe(&names[c], &f, s), model.subscribe(c, &f, s));
                    }
                    Op::Unsubscribe(c, f) => {
                        prop_assert_eq!(tree.unsubscribe(CLIENTS[c], &f), model.unsubscribe(c, &f));
                    }
                    Op::RemoveClient(c) => {
                        tree.remove_client(CLIENTS[c]);
                        for f in model.filters_of(c) {
                            model.unsubscribe(c, &f);
                        }
                    }
                    Op::Route(t, p) => {
                        prop_assert_eq!(route(&mut tree, &t, CLIENTS[p]), model.route(&t, p), "topic {:?}", t);
                    }
                }
                prop_assert_eq!(tree.len(), model.len());
                for (c, name) in CLIENTS.iter().enumerate() {
                    prop_assert_eq!(tree.client_count(name), model.filters_of(c).len());
                }
            }
            for name in CLIENTS {
                tree.remove_client(name);
            }
            prop_assert_eq!((tree.len(), tree.node_count()), (0, 0));
        }
    }

    // ---- micro-benchmarks: cargo test --release --lib -- --ignored --nocapture bench_ ----

    /// xorshift64*: enough randomness for benchmark topics, without a dependency.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
        }
    }

    /// Routes `ROUTES` random `devices/{i}/temp` topics through `n` subscriptions held by `n / 10`
    /// clients and prints ns per route. With `wildcards`, 1% of the filters are `devices/{i}/#`
    /// and ten are `devices/+/temp` whatever `n` is, so the deliveries per message stay the same.
    /// The topics are `distinct` random devices: 1,024 keeps the nodes touched in the CPU cache
    /// (the algorithmic cost), 65,536 spreads them over all devices (memory latency included).
    fn bench_route_at(n: u64, wildcards: bool, distinct: u64) {
        const ROUTES: u64 = 1_000_000;
        let mut tree = SubscriptionTree::default();
        let names: Vec<Arc<str>> = (0..n / 10).map(|i| format!("client-{i}").into()).collect();
        for i in 0..n {
            let filter = if wildcards && i < 10 {
                "devices/+/temp".to_string()
            } else if wildcards && i % 100 == 0 {
                format!("devices/{i}/#")
            } else {
                format!("devices/{i}/temp")
            };
            tree.subscribe(&names[(i % (n / 10)) as usize], &filter, sub(1, Some(1)));
        }
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let topics: Vec<String> = (0..distinct)
            .map(|_| format!("devices/{}/temp", rng.below(n)))
            .collect();
        let mut out = Vec::new();
        let mut delivered = 0;
        let start = Instant::now();
        for i in 0..ROUTES {
            out.clear();
            tree.route(&topics[(i % distinct) as usize], "publisher", &mut out);
            delivered += out.len();
        }
        let elapsed = start.elapsed();
        println!(
            "bench_route: {n:>7} subscriptions ({}), {:>5} clients, {distinct:>5} distinct topics: {:>5.0} ns/route, {:.1} routes/message",
            if wildcards {
                "with wildcards"
            } else {
                "literal only"
            },
            n / 10,
            elapsed.as_nanos() as f64 / ROUTES as f64,
            delivered as f64 / ROUTES as f64
        );
    }

    #[test]
    #[ignore]
    fn bench_route() {
        for (wildcards, distinct) in [
            (false, 1 << 10),
            (false, 1 << 16),
            (true, 1 << 10),
            (true, 1 << 16),
        ] {
            for n in [1_000, 10_000, 100_000] {
                bench_route_at(n, wildcards, distinct);
            }
        }
    }
}
