//! Authorization rules: who may publish to, subscribe to and receive from which topics.
//!
//! Rules live in the `acl_rules` table (`mqttd acl add|remove|list`). When a client connects,
//! the session loads the rules for its username, its client id and everyone (`LoadAcl`) and
//! builds an [`Acl`]; every check after that is in memory. On SIGHUP (`Broker::reload_acl`)
//! every connected session loads them again and swaps its `Acl`, keeping the old one if the
//! database fails. With `retained_recheck_publisher`, a retained message is sent on SUBSCRIBE
//! only if an `Acl` built the same way for its publisher still allows the publish.
//!
//! How a request is decided:
//!
//! - The applicable rules are those for the client's username, for its client id, and for
//!   everyone (`all`), of the requested action (publish, subscribe or receive).
//! - Deny wins: if any applicable rule matching the topic denies, the request is denied; else if
//!   one allows, it is allowed.
//! - Nothing matched: if at least one rule (of any action) names this username or this client
//!   id, the request is denied. Otherwise the broker's default applies (`default_allow`), so
//!   `all` rules alone do not lock out clients that have no rules of their own.
//! - A rule level that is exactly `%u` stands for the username and `%c` for the client id. They
//!   are compared literally with one topic level and never act as wildcards: a username `+` or
//!   `#` does not match anything (CVE-2017-7650), and neither does an empty username or one
//!   containing `/`. Without a username, `%u` never matches.
//! - Publish and receive: the rule is matched against the topic name as a subscription filter
//!   would be, including the rule that a leading `+` or `#` does not match a topic starting
//!   with `$`.
//! - Subscribe: the rule must cover the requested filter, that is every topic the filter can
//!   match. Each requested level must equal the rule's level (a requested `+` or `#` is compared
//!   as text), or fall under a rule `+`, except that a rule `+` does not cover a requested `#`;
//!   a rule `#` covers every level from there on. So rule `a/+` allows subscribing to `a/b` and
//!   `a/+` but not `a/#`, and rule `#` does not cover `$SYS/#`. A shared subscription
//!   `$share/{group}/{filter}` is checked as `{filter}`.

use std::fmt;
use std::str::FromStr;

use crate::mqtt::topic::{self, TopicError};

/// Whom a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclSubject {
    /// Clients authenticated with this username.
    User(String),
    /// The client with this client identifier.
    Client(String),
    /// Every client.
    All,
}

impl AclSubject {
    /// The `subject_kind` column: "user", "client" or "all".
    pub fn kind(&self) -> &'static str {
        match self {
            AclSubject::User(_) => "user",
            AclSubject::Client(_) => "client",
            AclSubject::All => "all",
        }
    }

    /// The username or client id; `None` for [`AclSubject::All`].
    pub fn name(&self) -> Option<&str> {
        match self {
            AclSubject::User(name) | AclSubject::Client(name) => Some(name),
            AclSubject::All => None,
        }
    }
}

impl fmt::Display for AclSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{} {name}", self.kind()),
            None => f.write_str(self.kind()),
        }
    }
}

/// What a rule governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclAction {
    /// PUBLISH to a topic (and the Will's topic).
    Publish,
    /// SUBSCRIBE with a topic filter.
    Subscribe,
    /// Receiving a message published on a topic.
    Receive,
}

impl AclAction {
    /// "publish", "subscribe" or "receive", as stored and as the command line spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            AclAction::Publish => "publish",
            AclAction::Subscribe => "subscribe",
            AclAction::Receive => "receive",
        }
    }
}

impl fmt::Display for AclAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AclAction {
    type Err = ParseAclError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "publish" => Ok(AclAction::Publish),
            "subscribe" => Ok(AclAction::Subscribe),
            "receive" => Ok(AclAction::Receive),
            _ => Err(ParseAclError::Action(s.to_owned())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclPermission {
    Allow,
    Deny,
}

impl AclPermission {
    /// "allow" or "deny", as stored and as the command line spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            AclPermission::Allow => "allow",
            AclPermission::Deny => "deny",
        }
    }
}

impl fmt::Display for AclPermission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AclPermission {
    type Err = ParseAclError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(AclPermission::Allow),
            "deny" => Ok(AclPermission::Deny),
            _ => Err(ParseAclError::Permission(s.to_owned())),
        }
    }
}

/// A word that is not an action or a permission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseAclError {
    #[error("unknown action {0:?}: expected publish, subscribe or receive")]
    Action(String),
    #[error("unknown permission {0:?}: expected allow or deny")]
    Permission(String),
}

/// One row of the `acl_rules` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRule {
    pub id: i64,
    pub subject: AclSubject,
    pub action: AclAction,
    pub permission: AclPermission,
    /// A topic filter; a level that is exactly `%u` or `%c` stands for the client's username or
    /// client identifier, compared literally (never as a wildcard).
    pub topic: String,
}

impl AclRule {
    /// Whether the rule names this username or client id (rather than everyone).
    fn names(&self, username: Option<&str>, client_id: &str) -> bool {
        match &self.subject {
            AclSubject::User(name) => username == Some(name.as_str()),
            AclSubject::Client(id) => id == client_id,
            AclSubject::All => false,
        }
    }
}

impl fmt::Display for AclRule {
    /// One line for `mqttd acl list`, e.g. `3  user alice  allow  publish  sensors/%u/#`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}  {}  {}  {}  {}",
            self.id, self.subject, self.permission, self.action, self.topic
        )
    }
}

/// The rule level standing for the username.
const USERNAME_LEVEL: &str = "%u";
/// The rule level standing for the client identifier.
const CLIENT_ID_LEVEL: &str = "%c";

/// Why a topic cannot be the topic of a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleTopicError {
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("%u and %c must each be a whole topic level")]
    PartialSubstitution,
    #[error(
        "a rule cannot name a shared subscription: $share/{{group}}/{{filter}} is checked \
         against the rules for {{filter}}"
    )]
    Shared,
}

/// Checks the topic of a new rule: a valid topic filter once `%u` and `%c` are read as
/// ordinary text, with each `%u`/`%c` a whole level (`a/x%u` would look like a substitution
/// but be compared as text).
pub fn validate_rule_topic(topic: &str) -> Result<(), RuleTopicError> {
    let partial = topic.split('/').any(|level| {
        level != USERNAME_LEVEL
            && level != CLIENT_ID_LEVEL
            && (level.contains(USERNAME_LEVEL) || level.contains(CLIENT_ID_LEVEL))
    });
    if partial {
        return Err(RuleTopicError::PartialSubstitution);
    }
    topic::validate_topic_filter(topic)?;
    if topic::split_shared(topic).is_some() {
        return Err(RuleTopicError::Shared);
    }
    Ok(())
}

/// The authorization of one connection: the rules that apply to it, evaluated in memory.
#[derive(Debug, Clone)]
pub struct Acl {
    /// `None` when no rule applies (most connections, and every idle one would carry 64
    /// bytes of empty rules): every check then gives `default_allow`.
    rules: Option<Box<Rules>>,
    /// The answer when no rule matches.
    default_allow: bool,
}

#[derive(Debug, Clone)]
struct Rules {
    /// Only the rules for this username, this client id, or everyone.
    rules: Vec<AclRule>,
    /// `None` also when the username could never match `%u` safely (see [`substitute`]).
    username: Option<String>,
    client_id: Option<String>,
}

impl Acl {
    /// The rules that apply to one connection, as loaded by LoadAcl. `default_allow` applies when
    /// no rule for this user or client id exists.
    pub fn new(
        rules: Vec<AclRule>,
        username: Option<&str>,
        client_id: &str,
        default_allow: bool,
    ) -> Acl {
        // Filter again: the caller may pass more rules than LoadAcl returns.
        let rules: Vec<AclRule> = rules
            .into_iter()
            .filter(|r| r.subject == AclSubject::All || r.names(username, client_id))
            .collect();
        let has_own_rules = rules.iter().any(|r| r.names(username, client_id));
        Acl {
            rules: (!rules.is_empty()).then(|| {
                Box::new(Rules {
                    rules,
                    username: substitute(username),
                    client_id: substitute(Some(client_id)),
                })
            }),
            default_allow: default_allow && !has_own_rules,
        }
    }

    /// An Acl that allows everything (no rules at all and default allow) — cheap to check.
    pub fn allow_all() -> Acl {
        Acl {
            rules: None,
            default_allow: true,
        }
    }

    /// Whether `action` on `topic_or_filter` is allowed: a topic name for publish and receive,
    /// a (possibly shared) topic filter for subscribe. The caller validates it first.
    /// Whether every check gives yes: no rule applies and the default allows.
    pub fn allows_everything(&self) -> bool {
        self.rules.is_none() && self.default_allow
    }

    pub fn allows(&self, action: AclAction, topic_or_filter: &str) -> bool {
        let Some(rules) = &self.rules else {
            return self.default_allow;
        };
        let target = match action {
            AclAction::Subscribe => topic::split_shared(topic_or_filter)
                .map_or(topic_or_filter, |(_group, filter)| filter),
            AclAction::Publish | AclAction::Receive => topic_or_filter,
        };
        let mut allowed = false;
        for rule in rules.rules.iter().filter(|r| r.action == action) {
            if rules.covers(&rule.topic, target) {
                match rule.permission {
                    AclPermission::Deny => return false,
                    AclPermission::Allow => allowed = true,
                }
            }
        }
        allowed || self.default_allow
    }
}

impl Rules {
    /// Whether rule filter `rule` matches topic name `target`, or covers topic filter `target`.
    /// One loop serves both: a topic name has no wildcards, and in a filter a requested `+` or
    /// `#` only equals the same rule level. Iterative, so deep topics cost no stack
    /// (CVE-2019-11779).
    fn covers(&self, rule: &str, target: &str) -> bool {
        // [MQTT-4.7.2-1]: wildcards at the first level do not reach topics starting with '$'.
        if target.starts_with('$') && rule.starts_with(['+', '#']) {
            return false;
        }
        let mut rule_levels = rule.split('/');
        let mut target_levels = target.split('/');
        loop {
            match (rule_levels.next(), target_levels.next()) {
                (Some("#"), _) => return true,
                // A requested '#' spans any number of levels, more than a rule '+' allows.
                (Some("+"), Some(level)) if level != "#" => {}
                (Some(USERNAME_LEVEL), Some(level)) if self.username.as_deref() == Some(level) => {}
                (Some(CLIENT_ID_LEVEL), Some(level))
                    if self.client_id.as_deref() == Some(level) => {}
                (Some(USERNAME_LEVEL | CLIENT_ID_LEVEL), Some(_)) => return false,
                (Some(r), Some(level)) if r == level => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

/// The value `%u` or `%c` stands for, or `None` if it must never match: compared as text with a
/// single level, so a value that is empty or holds '/', '+' or '#' could only match by being
/// mistaken for a wildcard or for several levels (CVE-2017-7650).
fn substitute(value: Option<&str>) -> Option<String> {
    value
        .filter(|v| !v.is_empty() && !v.contains(['/', '+', '#']))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use AclAction::*;
    use AclPermission::*;

    fn rule(
        subject: AclSubject,
        action: AclAction,
        permission: AclPermission,
        topic: &str,
    ) -> AclRule {
        AclRule {
            id: 0,
            subject,
            action,
            permission,
            topic: topic.to_owned(),
        }
    }

    fn user(name: &str) -> AclSubject {
        AclSubject::User(name.to_owned())
    }

    fn client(id: &str) -> AclSubject {
        AclSubject::Client(id.to_owned())
    }

    /// An Acl for user "alice", client "c1", default deny, with one rule per `(action, topic)`.
    fn alice_allowed(rules: &[(AclAction, &str)]) -> Acl {
        let rules = rules
            .iter()
            .map(|&(action, topic)| rule(user("alice"), action, Allow, topic))
            .collect();
        Acl::new(rules, Some("alice"), "c1", false)
    }

    #[test]
    fn parse_and_display_actions_and_permissions() {
        for action in [Publish, Subscribe, Receive] {
            assert_eq!(action.to_string().parse::<AclAction>(), Ok(action));
        }
        for permission in [Allow, Deny] {
            assert_eq!(
                permission.to_string().parse::<AclPermission>(),
                Ok(permission)
            );
        }
        assert_eq!(
            "Publish".parse::<AclAction>(),
            Err(ParseAclError::Action("Publish".into()))
        );
        assert_eq!(
            "permit".parse::<AclPermission>(),
            Err(ParseAclError::Permission("permit".into()))
        );
    }

    #[test]
    fn display_a_rule_on_one_line() {
        let mut r = rule(user("alice"), Publish, Allow, "sensors/%u/#");
        r.id = 3;
        assert_eq!(r.to_string(), "3  user alice  allow  publish  sensors/%u/#");
        r.subject = client("c1");
        r.permission = Deny;
        r.action = Receive;
        assert_eq!(r.to_string(), "3  client c1  deny  receive  sensors/%u/#");
        r.subject = AclSubject::All;
        r.action = Subscribe;
        assert_eq!(r.to_string(), "3  all  deny  subscribe  sensors/%u/#");
    }

    #[test]
    fn rule_topics() {
        for ok in [
            "#",
            "a/+/b",
            "sensors/%u/#",
            "%c",
            "%u/%c/+",
            "$SYS/#",
            "100%/x",
            "%x",
        ] {
            assert_eq!(validate_rule_topic(ok), Ok(()), "{ok:?}");
        }
        for bad in ["a/x%u", "%u%c", "%uu/#", "a/%cb", "%%u"] {
            assert_eq!(
                validate_rule_topic(bad),
                Err(RuleTopicError::PartialSubstitution),
                "{bad:?}"
            );
        }
        assert_eq!(
            validate_rule_topic("a/#/b"),
            Err(RuleTopicError::Topic(TopicError::InvalidMultiLevelWildcard))
        );
        assert_eq!(
            validate_rule_topic(""),
            Err(RuleTopicError::Topic(TopicError::Empty))
        );
        assert_eq!(
            validate_rule_topic("$share/g/%u/#"),
            Err(RuleTopicError::Shared)
        );
    }

    #[test]
    fn allow_all_allows_everything() {
        let acl = Acl::allow_all();
        for action in [Publish, Subscribe, Receive] {
            assert!(acl.allows(action, "a/b"));
            assert!(acl.allows(action, "$SYS/x"));
        }
        assert!(acl.allows(Subscribe, "#"));
    }

    #[test]
    fn no_rules_gives_the_default() {
        let open = Acl::new(vec![], Some("alice"), "c1", true);
        let closed = Acl::new(vec![], Some("alice"), "c1", false);
        for action in [Publish, Subscribe, Receive] {
            assert!(open.allows(action, "a/b"));
            assert!(!closed.allows(action, "a/b"));
        }
    }

    #[test]
    fn deny_by_default_only_once_the_user_has_a_rule() {
        let rules = vec![rule(user("alice"), Publish, Allow, "a/#")];
        let alice = Acl::new(rules.clone(), Some("alice"), "c1", true);
        assert!(alice.allows(Publish, "a/b"));
        assert!(
            !alice.allows(Publish, "b"),
            "unmatched: denied despite default allow"
        );
        assert!(
            !alice.allows(Subscribe, "x"),
            "a rule of any action makes every action deny-by-default"
        );
        // Bob has no rule: alice's rule neither applies to him nor closes his default.
        let bob = Acl::new(rules, Some("bob"), "c2", true);
        assert!(bob.allows(Publish, "b"));
        assert!(bob.allows(Publish, "a/b"));
    }

    #[test]
    fn a_client_id_rule_also_makes_it_deny_by_default() {
        let rules = vec![rule(client("c1"), Receive, Allow, "x")];
        let acl = Acl::new(rules.clone(), None, "c1", true);
        assert!(acl.allows(Receive, "x"));
        assert!(!acl.allows(Receive, "y"));
        assert!(!acl.allows(Publish, "y"));
        let other = Acl::new(rules, None, "c2", true);
        assert!(other.allows(Receive, "y"));
    }

    #[test]
    fn all_rules_keep_the_default_for_unmatched_requests() {
        let rules = vec![
            rule(AclSubject::All, Publish, Deny, "secret/#"),
            rule(AclSubject::All, Subscribe, Allow, "public/#"),
        ];
        let open = Acl::new(rules.clone(), Some("alice"), "c1", true);
        assert!(!open.allows(Publish, "secret/x"));
        assert!(open.allows(Publish, "other"), "no own rule: default allow");

        let closed = Acl::new(rules, Some("alice"), "c1", false);
        assert!(closed.allows(Subscribe, "public/+"));
        assert!(!closed.allows(Subscribe, "private/x"));
        assert!(!closed.allows(Publish, "other"));
        assert!(!closed.allows(Publish, "secret/x"));
    }

    #[test]
    fn deny_wins_over_allow() {
        let rules = vec![
            rule(user("alice"), Publish, Allow, "a/#"),
            rule(AclSubject::All, Publish, Deny, "a/private/+"),
            rule(client("c1"), Publish, Allow, "a/private/x"),
        ];
        let acl = Acl::new(rules, Some("alice"), "c1", true);
        assert!(acl.allows(Publish, "a/public"));
        assert!(
            !acl.allows(Publish, "a/private/x"),
            "deny of 'all' beats allow of the user"
        );
        assert!(acl.allows(Publish, "a/private/x/y"));
        // Order does not matter: a deny listed first also wins.
        let rules = vec![
            rule(user("alice"), Receive, Deny, "r"),
            rule(user("alice"), Receive, Allow, "#"),
        ];
        let acl = Acl::new(rules, Some("alice"), "c1", true);
        assert!(!acl.allows(Receive, "r"));
        assert!(acl.allows(Receive, "s"));
    }

    #[test]
    fn rules_of_other_subjects_and_actions_are_ignored() {
        let rules = vec![
            rule(user("bob"), Publish, Deny, "#"),
            rule(client("c2"), Publish, Deny, "#"),
            rule(user("alice"), Receive, Deny, "a"),
            rule(user("alice"), Publish, Allow, "a"),
        ];
        let acl = Acl::new(rules, Some("alice"), "c1", false);
        assert!(acl.allows(Publish, "a"));
        assert!(!acl.allows(Receive, "a"));
        // A client id that equals another user's name does not pick up that user's rules.
        let rules = vec![rule(user("c1"), Publish, Deny, "#")];
        let acl = Acl::new(rules, Some("alice"), "c1", true);
        assert!(acl.allows(Publish, "a"));
    }

    #[test]
    fn publish_and_receive_match_like_a_subscription() {
        let acl = alice_allowed(&[
            (Publish, "sport/tennis/+"),
            (Publish, "news/#"),
            (Receive, "+/status"),
            (Receive, "$SYS/#"),
        ]);
        assert!(acl.allows(Publish, "sport/tennis/player1"));
        assert!(!acl.allows(Publish, "sport/tennis/player1/ranking"));
        assert!(!acl.allows(Publish, "sport/tennis"));
        assert!(acl.allows(Publish, "news"), "'news/#' includes its parent");
        assert!(acl.allows(Publish, "news/a/b/c"));
        assert!(!acl.allows(Publish, "newsx"));
        assert!(acl.allows(Receive, "d1/status"));
        assert!(!acl.allows(Receive, "d1/status/x"));
        assert!(
            !acl.allows(Publish, "d1/status"),
            "that rule is for receive"
        );
        assert!(acl.allows(Receive, "$SYS/broker/uptime"));
    }

    #[test]
    fn wildcards_at_the_first_level_do_not_match_dollar_topics() {
        let acl = alice_allowed(&[(Publish, "#"), (Receive, "+/x"), (Subscribe, "#")]);
        assert!(acl.allows(Publish, "a/b"));
        assert!(!acl.allows(Publish, "$SYS/x"));
        assert!(acl.allows(Receive, "a/x"));
        assert!(!acl.allows(Receive, "$internal/x"));
        assert!(!acl.allows(Subscribe, "$SYS/#"));
        assert!(!acl.allows(Subscribe, "$SYS/uptime"));
    }

    #[test]
    fn username_and_client_id_levels_match_literally() {
        let acl = alice_allowed(&[
            (Publish, "sensors/%u/#"),
            (Publish, "clients/%c/out"),
            (Subscribe, "cmd/%c/+"),
        ]);
        assert!(acl.allows(Publish, "sensors/alice/temp"));
        assert!(acl.allows(Publish, "sensors/alice"));
        assert!(!acl.allows(Publish, "sensors/bob/temp"));
        assert!(
            !acl.allows(Publish, "sensors/%u/temp"),
            "%u is no literal level"
        );
        assert!(acl.allows(Publish, "clients/c1/out"));
        assert!(!acl.allows(Publish, "clients/c2/out"));
        assert!(!acl.allows(Publish, "clients/alice/out"));
        assert!(acl.allows(Subscribe, "cmd/c1/+"));
        assert!(acl.allows(Subscribe, "cmd/c1/reboot"));
        assert!(
            !acl.allows(Subscribe, "cmd/+/reboot"),
            "a requested '+' is not c1"
        );
        assert!(!acl.allows(Subscribe, "cmd/#"));
        // A partial-level %u is plain text (add_rule rejects such rules anyway).
        let acl = alice_allowed(&[(Publish, "x%u")]);
        assert!(!acl.allows(Publish, "xalice"));
        assert!(acl.allows(Publish, "x%u"));
    }

    #[test]
    fn wildcard_usernames_and_client_ids_never_match_cve_2017_7650() {
        let rules = vec![
            rule(AclSubject::All, Subscribe, Allow, "users/%u/#"),
            rule(AclSubject::All, Subscribe, Allow, "clients/%c"),
            rule(AclSubject::All, Receive, Allow, "users/%u/#"),
            rule(AclSubject::All, Publish, Allow, "clients/%c"),
        ];
        let hash_user = Acl::new(rules.clone(), Some("#"), "ok", false);
        assert!(!hash_user.allows(Subscribe, "users/#"));
        assert!(!hash_user.allows(Subscribe, "users/#/x"));
        assert!(!hash_user.allows(Receive, "users/bob/x"));
        assert!(hash_user.allows(Subscribe, "clients/ok"));

        let plus_user = Acl::new(rules.clone(), Some("+"), "ok", false);
        assert!(!plus_user.allows(Subscribe, "users/+/#"));
        assert!(!plus_user.allows(Subscribe, "users/+"));
        assert!(!plus_user.allows(Receive, "users/bob"));

        let plus_client = Acl::new(rules.clone(), Some("alice"), "+", false);
        assert!(!plus_client.allows(Subscribe, "clients/+"));
        assert!(!plus_client.allows(Subscribe, "clients/other"));
        assert!(!plus_client.allows(Publish, "clients/other"));
        assert!(plus_client.allows(Subscribe, "users/alice/#"));

        let hash_client = Acl::new(rules.clone(), None, "#", false);
        assert!(!hash_client.allows(Subscribe, "clients/#"));
        assert!(!hash_client.allows(Publish, "clients/x"));

        // A '/' in a username would let %u span two levels.
        let slash_user = Acl::new(rules.clone(), Some("bob/secret"), "c", false);
        assert!(!slash_user.allows(Subscribe, "users/bob/secret/#"));
        assert!(!slash_user.allows(Receive, "users/bob/secret/x"));

        let no_user = Acl::new(rules.clone(), None, "c", false);
        assert!(!no_user.allows(Subscribe, "users//#"));
        assert!(!no_user.allows(Receive, "users//x"));
        let empty_user = Acl::new(rules, Some(""), "c", false);
        assert!(!empty_user.allows(Receive, "users//x"));
    }

    #[test]
    fn subscribe_requires_the_rule_to_cover_the_filter() {
        let acl = alice_allowed(&[(Subscribe, "a/+"), (Subscribe, "b/#"), (Subscribe, "c/d")]);
        assert!(acl.allows(Subscribe, "a/x"));
        assert!(acl.allows(Subscribe, "a/+"));
        assert!(
            !acl.allows(Subscribe, "a/#"),
            "rule '+' does not cover a requested '#'"
        );
        assert!(!acl.allows(Subscribe, "a/x/y"));
        assert!(!acl.allows(Subscribe, "a"));
        assert!(acl.allows(Subscribe, "b"));
        assert!(acl.allows(Subscribe, "b/#"));
        assert!(acl.allows(Subscribe, "b/+/x/#"));
        assert!(acl.allows(Subscribe, "c/d"));
        assert!(
            !acl.allows(Subscribe, "c/+"),
            "a requested '+' is wider than 'd'"
        );
        assert!(!acl.allows(Subscribe, "c/#"));
        assert!(!acl.allows(Subscribe, "+/d"));
        assert!(!acl.allows(Subscribe, "#"));

        let everything = alice_allowed(&[(Subscribe, "#")]);
        assert!(everything.allows(Subscribe, "#"));
        assert!(everything.allows(Subscribe, "+/+/#"));
        // A requested '+' under a rule '+' is covered.
        let exact = alice_allowed(&[(Subscribe, "x/+/y")]);
        assert!(exact.allows(Subscribe, "x/+/y"));
        assert!(!exact.allows(Subscribe, "x/#"));
    }

    #[test]
    fn shared_subscriptions_are_checked_on_their_filter() {
        let acl = alice_allowed(&[(Subscribe, "jobs/#")]);
        assert!(acl.allows(Subscribe, "$share/workers/jobs/+"));
        assert!(!acl.allows(Subscribe, "$share/workers/other"));
        assert!(
            !acl.allows(Subscribe, "$share/jobs/x"),
            "group 'jobs', filter 'x'"
        );
        // Publish topics are never split.
        let acl = alice_allowed(&[(Publish, "jobs/#")]);
        assert!(!acl.allows(Publish, "$share/g/jobs/x"));
    }

    #[test]
    fn deep_topics_do_not_recurse() {
        let topic = "a/".repeat(40_000) + "b";
        let acl = alice_allowed(&[(Publish, &("+/".repeat(40_000) + "%u"))]);
        assert!(!acl.allows(Publish, &topic));
        assert!(acl.allows(Publish, &("a/".repeat(40_000) + "alice")));
    }
}
