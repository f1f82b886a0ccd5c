//! `topic`: topic-name/filter validation, `topic::matches` and the `SubscriptionTree`, each
//! against a small reference written here.
//!
//! - Any string: `validate_topic_name`/`validate_topic_filter` never panic and accept exactly
//!   what the reference validators accept.
//! - Valid (filter, topic) pairs: `topic::matches` agrees with `reference_matches`.
//! - A sequence of subscribe / unsubscribe / remove-client / route operations on a
//!   `SubscriptionTree` and on a plain list model: every return value, `len`, `client_count`
//!   and every set of Routes (including the round-robin pick of shared subscriptions) agree.
//!
//! Random strings rarely contain '/', '+', '#' or "$share/" where they matter, so most strings
//! are spelled from a small token alphabet (`Spelled`); raw `String`s are checked as well.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mqttd::mqtt::topic::{matches, split_shared, validate_topic_filter, validate_topic_name};
use mqttd::mqtt::{QoS, SubscriptionOptions};
use mqttd::registry::subscriptions::{Route, Subscription, SubscriptionTree};

/// A string made of tokens that matter to topics.
#[derive(Arbitrary, Debug)]
struct Spelled(Vec<u8>);

const TOKENS: [&str; 16] = [
    "a", "b", "/", "/", "+", "#", "$", "$SYS", "$share/", "g", "", "\0", "é", " ", "a+", "sport",
];

impl Spelled {
    fn spell(&self) -> String {
        self.0
            .iter()
            .map(|&b| TOKENS[usize::from(b & 15)])
            .collect()
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Subscribe {
        client: u8,
        filter: Spelled,
        qos: u8,
        no_local: bool,
        retain_as_published: bool,
        identifier: Option<u32>,
    },
    Unsubscribe {
        client: u8,
        filter: Spelled,
    },
    RemoveClient {
        client: u8,
    },
    Route {
        topic: Spelled,
        publisher: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    raw_filter: String,
    raw_topic: String,
    filter: Spelled,
    topic: Spelled,
    ops: Vec<Op>,
}

fn reference_valid_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= 65_535 && !topic.contains(['\0', '+', '#'])
}

fn reference_valid_plain_filter(filter: &str) -> bool {
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| {
        let hash_ok = !level.contains('#') || (*level == "#" && i == levels.len() - 1);
        let plus_ok = !level.contains('+') || *level == "+";
        hash_ok && plus_ok
    })
}

fn reference_valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > 65_535 || filter.contains('\0') {
        return false;
    }
    match filter.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((name, inner)) => {
                !name.is_empty()
                    && !inner.is_empty()
                    && !name.contains(['+', '#'])
                    && reference_valid_plain_filter(inner)
            }
            None => false,
        },
        None => reference_valid_plain_filter(filter),
    }
}

/// §4.7: level by level; '#' matches the rest (including nothing), '+' one level (maybe empty);
/// a first-level wildcard never matches a topic starting with '$'.
fn reference_matches(filter: &str, topic: &str) -> bool {
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    if topic.starts_with('$') && (f[0] == "+" || f[0] == "#") {
        return false;
    }
    let mut i = 0;
    loop {
        match (f.get(i), t.get(i)) {
            (Some(&"#"), _) => return true,
            (Some(&"+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
        i += 1;
    }
}

fn check_strings(filter: &str, topic: &str) {
    let name_ok = validate_topic_name(topic).is_ok();
    assert_eq!(name_ok, reference_valid_name(topic), "name {topic:?}");
    let filter_ok = validate_topic_filter(filter).is_ok();
    assert_eq!(
        filter_ok,
        reference_valid_filter(filter),
        "filter {filter:?}"
    );
    // A valid name is a valid filter that matches itself, except that a name starting with
    // "$share/" reads as a (possibly malformed) shared subscription when used as a filter.
    if name_ok && !topic.starts_with("$share/") {
        assert!(validate_topic_filter(topic).is_ok(), "{topic:?}");
        assert!(matches(topic, topic), "{topic:?} does not match itself");
    }
    if name_ok && filter_ok {
        let inner = split_shared(filter).map_or(filter, |(_, inner)| inner);
        assert_eq!(
            matches(inner, topic),
            reference_matches(inner, topic),
            "matches({inner:?}, {topic:?})"
        );
    }
}

/// The model: every subscription as a plain list entry.
#[derive(Default)]
struct Model {
    /// (client, filter as subscribed) -> subscription.
    subs: BTreeMap<(u8, String), Subscription>,
    /// (ShareName, inner filter) -> members in join order as (seq, client), next seq, cursor.
    groups: BTreeMap<(String, String), (Vec<(u64, u8)>, u64, u64)>,
}

impl Model {
    fn subscribe(&mut self, client: u8, filter: &str, sub: Subscription) -> bool {
        let existed = self.subs.insert((client, filter.to_owned()), sub).is_some();
        if let Some((name, inner)) = split_shared(filter) {
            let group = self
                .groups
                .entry((name.to_owned(), inner.to_owned()))
                .or_default();
            if !group.0.iter().any(|&(_, c)| c == client) {
                group.0.push((group.1, client));
                group.1 += 1;
            }
        }
        existed
    }

    fn unsubscribe(&mut self, client: u8, filter: &str) -> bool {
        let existed = self.subs.remove(&(client, filter.to_owned())).is_some();
        if existed && let Some((name, inner)) = split_shared(filter) {
            let key = (name.to_owned(), inner.to_owned());
            let group = self.groups.get_mut(&key).expect("group of a shared sub");
            group.0.retain(|&(_, c)| c != client);
            if group.0.is_empty() {
                self.groups.remove(&key);
            }
        }
        existed
    }

    fn route(&mut self, topic: &str, publisher: u8) -> Vec<Route> {
        let mut ordinary: BTreeMap<u8, Route> = BTreeMap::new();
        for ((client, filter), sub) in &self.subs {
            if split_shared(filter).is_some() || !reference_matches(filter, topic) {
                continue;
            }
            if sub.options.no_local && *client == publisher {
                continue;
            }
            let route = ordinary.entry(*client).or_insert_with(|| Route {
                client: name(*client),
                qos: QoS::AtMostOnce,
                retain_as_published: false,
                subscription_ids: Vec::new(),
            });
            route.qos = route.qos.max(sub.options.qos);
            route.retain_as_published |= sub.options.retain_as_published;
            if let Some(id) = sub.identifier
                && !route.subscription_ids.contains(&id)
            {
                route.subscription_ids.push(id);
            }
        }
        let mut out: Vec<Route> = ordinary.into_values().collect();
        for ((share, inner), (members, _, cursor)) in &mut self.groups {
            if !reference_matches(inner, topic) {
                continue;
            }
            let &(seq, client) = members
                .iter()
                .find(|&&(seq, _)| seq >= *cursor)
                .unwrap_or(&members[0]);
            *cursor = seq + 1;
            let sub = self.subs[&(client, format!("$share/{share}/{inner}"))];
            out.push(Route {
                client: name(client),
                qos: sub.options.qos,
                retain_as_published: sub.options.retain_as_published,
                subscription_ids: sub.identifier.into_iter().collect(),
            });
        }
        out
    }

    fn client_count(&self, client: u8) -> usize {
        self.subs.keys().filter(|(c, _)| *c == client).count()
    }
}

fn name(client: u8) -> Arc<str> {
    format!("c{client}").into()
}

fn normalize(mut routes: Vec<Route>) -> Vec<(Arc<str>, QoS, bool, Vec<u32>)> {
    let mut out: Vec<_> = routes
        .drain(..)
        .map(|mut r| {
            r.subscription_ids.sort_unstable();
            (r.client, r.qos, r.retain_as_published, r.subscription_ids)
        })
        .collect();
    out.sort();
    out
}

fuzz_target!(|input: Input| {
    check_strings(&input.raw_filter, &input.raw_topic);
    check_strings(&input.filter.spell(), &input.topic.spell());

    let mut tree = SubscriptionTree::default();
    let mut model = Model::default();
    let mut clients = BTreeSet::new();
    for op in input.ops.iter().take(64) {
        match op {
            Op::Subscribe {
                client,
                filter,
                qos,
                no_local,
                retain_as_published,
                identifier,
            } => {
                let client = client % 4;
                let filter = filter.spell();
                if validate_topic_filter(&filter).is_err() {
                    continue;
                }
                let sub = Subscription {
                    options: SubscriptionOptions {
                        qos: QoS::from_u8(qos % 3).expect("0..=2"),
                        no_local: *no_local,
                        retain_as_published: *retain_as_published,
                        ..SubscriptionOptions::default()
                    },
                    identifier: identifier.filter(|&id| id != 0),
                };
                clients.insert(client);
                let existed = tree.subscribe(&name(client), &filter, sub);
                assert_eq!(existed, model.subscribe(client, &filter, sub), "{filter:?}");
            }
            Op::Unsubscribe { client, filter } => {
                let client = client % 4;
                let filter = filter.spell();
                assert_eq!(
                    tree.unsubscribe(&name(client), &filter),
                    model.unsubscribe(client, &filter),
                    "unsubscribe {filter:?}"
                );
            }
            Op::RemoveClient { client } => {
                let client = client % 4;
                tree.remove_client(&name(client));
                let filters: Vec<String> = model
                    .subs
                    .keys()
                    .filter(|(c, _)| *c == client)
                    .map(|(_, f)| f.clone())
                    .collect();
                for f in filters {
                    model.unsubscribe(client, &f);
                }
            }
            Op::Route { topic, publisher } => {
                let topic = topic.spell();
                if validate_topic_name(&topic).is_err() {
                    continue;
                }
                let publisher = publisher % 5;
                let mut out = Vec::new();
                tree.route(&topic, &name(publisher), &mut out);
                let expected = model.route(&topic, publisher);
                assert_eq!(normalize(out), normalize(expected), "route {topic:?}");
            }
        }
        assert_eq!(tree.len(), model.subs.len());
        assert_eq!(tree.is_empty(), model.subs.is_empty());
        for &c in &clients {
            assert_eq!(tree.client_count(&name(c)), model.client_count(c));
        }
    }
});
