//! Retained messages by topic (§3.3.1.3), searchable by topic filter when a client subscribes.
//!
//! A trie with one node per topic level, each node holding at most one retained value. A filter
//! is matched by walking it level by level with an explicit worklist (topics may have 65,000
//! levels, so no recursion): a literal level follows one child, `+` follows every child, `#`
//! takes the node itself (`sport/#` matches `sport`, §4.7.1.2) and its whole subtree. At the
//! root, `+` and `#` skip the levels starting with '$' [MQTT-4.7.2-1]. So `a/+/c` visits only
//! the children of `a`, not every retained topic. Nodes live in an arena addressed by index
//! with a parent link, so that removal prunes upwards and dropping a deep chain does not
//! recurse.

use std::collections::HashMap;
use std::sync::Arc;

type NodeId = usize;
const ROOT: NodeId = 0;

struct Node<T> {
    parent: NodeId,
    /// This node's level under its parent; `None` for the root and free arena slots.
    level: Option<Arc<str>>,
    children: HashMap<Arc<str>, NodeId>,
    value: Option<T>,
}

impl<T> Node<T> {
    fn new(parent: NodeId, level: Option<Arc<str>>) -> Self {
        Node {
            parent,
            level,
            children: HashMap::new(),
            value: None,
        }
    }
}

/// Retained messages by topic, searchable by topic filter.
pub struct RetainedStore<T> {
    nodes: Vec<Node<T>>,
    free: Vec<NodeId>,
    len: usize,
}

impl<T: Clone> Default for RetainedStore<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// One step of `matching`: match the filter from byte offset `pos` (`None`: the filter is used
/// up) at `node`, or take `node` and its whole subtree (after a `#`).
enum Step {
    Match(NodeId, Option<usize>),
    Subtree(NodeId),
}

impl<T: Clone> RetainedStore<T> {
    pub fn new() -> Self {
        RetainedStore {
            nodes: vec![Node::new(ROOT, None)],
            free: Vec::new(),
            len: 0,
        }
    }

    /// Stores `value` as the retained message of `topic` (a valid Topic Name), returning the
    /// one it replaces.
    pub fn insert(&mut self, topic: &str, value: T) -> Option<T> {
        let mut id = ROOT;
        for level in topic.split('/') {
            id = match self.nodes[id].children.get(level) {
                Some(&child) => child,
                None => {
                    let key: Arc<str> = level.into();
                    let child = self.alloc(Node::new(id, Some(key.clone())));
                    self.nodes[id].children.insert(key, child);
                    child
                }
            };
        }
        let old = self.nodes[id].value.replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes the retained message of `topic`.
    pub fn remove(&mut self, topic: &str) -> Option<T> {
        let id = self.find(topic)?;
        let old = self.nodes[id].value.take()?;
        self.len -= 1;
        self.prune(id);
        Some(old)
    }

    pub fn get(&self, topic: &str) -> Option<&T> {
        self.nodes[self.find(topic)?].value.as_ref()
    }

    /// Appends every retained value whose topic matches `filter` (a valid, non-shared Topic
    /// Filter), in no particular order.
    pub fn matching(&self, filter: &str, out: &mut Vec<T>) {
        let mut work = vec![Step::Match(ROOT, Some(0))];
        while let Some(step) = work.pop() {
            match step {
                Step::Subtree(id) => {
                    let node = &self.nodes[id];
                    out.extend(node.value.iter().cloned());
                    work.extend(node.children.values().map(|&c| Step::Subtree(c)));
                }
                Step::Match(id, None) => out.extend(self.nodes[id].value.iter().cloned()),
                Step::Match(id, Some(pos)) => {
                    let node = &self.nodes[id];
                    let rest = &filter[pos..];
                    let (level, next) = match rest.find('/') {
                        Some(i) => (&rest[..i], Some(pos + i + 1)),
                        None => (rest, None),
                    };
                    // [MQTT-4.7.2-1]: a first-level wildcard does not match '$' topics.
                    let visible = |l: &Arc<str>| id != ROOT || !l.starts_with('$');
                    match level {
                        "#" => {
                            // The root holds no value: every topic has at least one level.
                            out.extend(node.value.iter().cloned());
                            work.extend(
                                node.children
                                    .iter()
                                    .filter(|(l, _)| visible(l))
                                    .map(|(_, &c)| Step::Subtree(c)),
                            );
                        }
                        "+" => work.extend(
                            node.children
                                .iter()
                                .filter(|(l, _)| visible(l))
                                .map(|(_, &c)| Step::Match(c, next)),
                        ),
                        _ => {
                            if let Some(&child) = node.children.get(level) {
                                work.push(Step::Match(child, next));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Every retained value, in no particular order: O(topic levels stored).
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.nodes.iter().filter_map(|node| node.value.as_ref())
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn find(&self, topic: &str) -> Option<NodeId> {
        let mut id = ROOT;
        for level in topic.split('/') {
            id = *self.nodes[id].children.get(level)?;
        }
        Some(id)
    }

    fn alloc(&mut self, node: Node<T>) -> NodeId {
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

    /// Unlinks and frees `id` and then its ancestors for as long as they hold nothing.
    fn prune(&mut self, mut id: NodeId) {
        while id != ROOT && self.nodes[id].value.is_none() && self.nodes[id].children.is_empty() {
            let node = std::mem::replace(&mut self.nodes[id], Node::new(ROOT, None));
            if let Some(level) = node.level {
                self.nodes[node.parent].children.remove(&level);
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use proptest::prelude::*;

    use super::*;
    use crate::mqtt::topic::matches;

    fn matching(store: &RetainedStore<String>, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        store.matching(filter, &mut out);
        out.sort();
        out
    }

    fn store_of(topics: &[&str]) -> RetainedStore<String> {
        let mut store = RetainedStore::new();
        for t in topics {
            assert_eq!(store.insert(t, t.to_string()), None);
        }
        store
    }

    #[test]
    fn spec_examples() {
        let topics = [
            "sport",
            "sport/",
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
            "sport/tennis/player2",
            "/finance",
            "finance",
            "$SYS/monitor/Clients",
            "$SYS",
        ];
        let store = store_of(&topics);
        for filter in [
            "sport/tennis/player1/#",
            "sport/#",
            "sport/+",
            "sport/tennis/+",
            "+/+",
            "/+",
            "+",
            "#",
            "$SYS/#",
            "+/monitor/Clients",
            "$SYS/monitor/+",
            "sport/tennis/player2",
            "nothing/#",
        ] {
            let mut expected: Vec<String> = topics
                .iter()
                .filter(|t| matches(filter, t))
                .map(|t| t.to_string())
                .collect();
            expected.sort();
            assert_eq!(matching(&store, filter), expected, "{filter}");
        }
        assert_eq!(matching(&store, "sport/#").len(), 6);
        assert_eq!(matching(&store, "#").len(), 8);
        assert_eq!(matching(&store, "$SYS/#"), ["$SYS", "$SYS/monitor/Clients"]);
        assert!(matching(&store, "+/monitor/Clients").is_empty());
    }

    #[test]
    fn insert_replace_remove_prune() {
        let mut store = store_of(&["a/b/c", "a/b", "x"]);
        assert_eq!(store.len(), 3);
        assert_eq!(store.insert("a/b", "new".into()).as_deref(), Some("a/b"));
        assert_eq!(store.get("a/b").map(String::as_str), Some("new"));
        assert_eq!(store.get("a"), None);
        assert_eq!(store.remove("a"), None);
        assert_eq!(store.remove("a/b/c/d"), None);
        assert_eq!(store.remove("a/b").as_deref(), Some("new"));
        assert_eq!(store.remove("a/b"), None);
        assert_eq!(store.get("a/b/c").map(String::as_str), Some("a/b/c"));
        assert_eq!(store.node_count(), 4);
        let mut values: Vec<&str> = store.values().map(String::as_str).collect();
        values.sort_unstable();
        assert_eq!(values, ["a/b/c", "x"], "removed values are not listed");
        store.remove("a/b/c");
        store.remove("x");
        assert!(store.is_empty());
        assert_eq!(store.node_count(), 0);
        assert_eq!(store.values().count(), 0);
    }

    #[test]
    fn deep_topics_do_not_overflow_the_stack() {
        let mut store = RetainedStore::new();
        let deep = "/".repeat(64_999); // 65,000 empty levels
        store.insert(&deep, 1);
        store.insert(&"/".repeat(30_000), 2);
        let mut out = Vec::new();
        store.matching("#", &mut out);
        store.matching(&("+/".repeat(32_767) + "#"), &mut out);
        store.matching(&deep, &mut out);
        out.sort_unstable();
        // The 32,768-level filter needs at least 32,767 levels: the 30,001-level topic is short.
        assert_eq!(out, [1, 1, 1, 2]);
        assert_eq!(store.remove(&deep), Some(1));
        assert_eq!(store.node_count(), 30_001);
        // Dropping a deep store does not recurse either.
        store.insert(&deep, 1);
        drop(store);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(String, u32),
        Remove(String),
    }

    fn topic_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(&["a", "b", "", "$s"][..]), 1..5)
            .prop_map(|levels| levels.join("/"))
    }

    fn filter_strategy() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop::sample::select(&["a", "b", "", "+", "$s"][..]), 0..5),
            any::<bool>(),
        )
            .prop_map(|(mut levels, hash)| {
                if hash || levels.is_empty() {
                    levels.push("#");
                }
                levels.join("/")
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn matching_matches_naive_model(
            ops in prop::collection::vec(
                prop_oneof![
                    3 => (topic_strategy(), any::<u32>()).prop_map(|(t, v)| Op::Insert(t, v)),
                    1 => topic_strategy().prop_map(Op::Remove),
                ],
                0..40,
            ),
            filters in prop::collection::vec(filter_strategy(), 1..10),
        ) {
            let mut store = RetainedStore::new();
            let mut model = std::collections::BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(t, v) => prop_assert_eq!(store.insert(&t, v), model.insert(t, v)),
                    Op::Remove(t) => prop_assert_eq!(store.remove(&t), model.remove(&t)),
                }
                prop_assert_eq!(store.len(), model.len());
            }
            for (t, v) in &model {
                prop_assert_eq!(store.get(t), Some(v));
            }
            for f in &filters {
                let mut got = Vec::new();
                store.matching(f, &mut got);
                got.sort_unstable();
                let mut expected: Vec<u32> =
                    model.iter().filter(|(t, _)| matches(f, t)).map(|(_, &v)| v).collect();
                expected.sort_unstable();
                prop_assert_eq!(got, expected, "filter {:?}", f);
            }
            for t in model.keys() {
                store.remove(t);
            }
            prop_assert_eq!((store.len(), store.node_count()), (0, 0));
        }
    }

    // cargo test --release --lib -- --ignored --nocapture bench_
    #[test]
    #[ignore]
    fn bench_retained_matching() {
        const N: usize = 100_000;
        let mut store = RetainedStore::new();
        for i in 0..N {
            // Two retained topics per device.
            let kind = if i % 2 == 0 { "temp" } else { "humidity" };
            store.insert(&format!("devices/{}/{kind}", i / 2), i);
        }
        for (filter, runs) in [("#", 20), ("devices/+/temp", 20), ("devices/42/+", 100_000)] {
            let mut out = Vec::new();
            let start = Instant::now();
            for _ in 0..runs {
                out.clear();
                store.matching(filter, &mut out);
            }
            let per_call = start.elapsed().as_secs_f64() * 1e3 / f64::from(runs);
            println!(
                "bench_retained_matching: {N} retained, matching({filter:?}): {per_call:.4} ms/call, {} values",
                out.len()
            );
        }
    }
}
