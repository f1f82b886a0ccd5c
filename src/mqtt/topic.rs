//! Topic names, topic filters and matching (§4.7), with shared subscriptions (§4.8.2).
//!
//! Matching walks both strings level by level in one loop: no recursion, so a filter or topic of
//! 65,000 levels costs time linear in its length and no stack (CVE-2019-11779).

/// Why a topic name or filter is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("[MQTT-4.7.3-1] topic names and filters must be at least one character long")]
    Empty,
    #[error("[MQTT-4.7.3-3] topic of {0} bytes is longer than 65,535")]
    TooLong(usize),
    #[error("[MQTT-4.7.3-2] topic contains U+0000")]
    NullCharacter,
    #[error("[MQTT-3.3.2-2] a topic name must not contain wildcard characters")]
    WildcardInTopicName,
    #[error("[MQTT-4.7.1-1] '#' must be the whole last level of a filter")]
    InvalidMultiLevelWildcard,
    #[error("[MQTT-4.7.1-2] '+' must occupy a whole level of a filter")]
    InvalidSingleLevelWildcard,
    #[error("[MQTT-4.8.2-1] a shared subscription needs a non-empty ShareName and a topic filter")]
    InvalidSharedSubscription,
    #[error("[MQTT-4.8.2-2] a ShareName must not contain '/', '+' or '#'")]
    WildcardInShareName,
}

const SHARE_PREFIX: &str = "$share/";

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > usize::from(u16::MAX) {
        return Err(TopicError::TooLong(s.len()));
    }
    if s.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// A Topic Name as a PUBLISH (or Will) carries it: non-empty, no wildcards.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    check_common(topic)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInTopicName);
    }
    Ok(())
}

/// A Topic Filter as SUBSCRIBE/UNSUBSCRIBE carry it, including `$share/{ShareName}/{filter}`.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    if let Some(rest) = filter.strip_prefix(SHARE_PREFIX) {
        // No second '/' means no filter part at all ("$share/p").
        let (name, inner) = rest
            .split_once('/')
            .ok_or(TopicError::InvalidSharedSubscription)?;
        if name.is_empty() || inner.is_empty() {
            return Err(TopicError::InvalidSharedSubscription);
        }
        if name.contains(['+', '#']) {
            return Err(TopicError::WildcardInShareName);
        }
        return validate_plain_filter(inner);
    }
    validate_plain_filter(filter)
}

fn validate_plain_filter(filter: &str) -> Result<(), TopicError> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::InvalidMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::InvalidSingleLevelWildcard);
        }
    }
    Ok(())
}

/// Splits `$share/{ShareName}/{filter}` into the share name and the filter; `None` for a filter
/// that is not a shared subscription. Assumes the filter passed `validate_topic_filter`.
pub fn split_shared(filter: &str) -> Option<(&str, &str)> {
    filter.strip_prefix(SHARE_PREFIX)?.split_once('/')
}

/// Whether `topic` (a valid Topic Name) matches `filter` (a valid, non-shared Topic Filter).
/// A filter starting with a wildcard does not match a topic starting with '$' [MQTT-4.7.2-1];
/// "sport/#" matches "sport" as well as everything below it (§4.7.1.2).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        for ok in [
            "sport/tennis/player1",
            "/",
            "a",
            "$SYS/x",
            " ",
            "sport//x",
            "\u{FEFF}",
        ] {
            assert_eq!(validate_topic_name(ok), Ok(()), "{ok:?}");
        }
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        for bad in ["+opic", "a/#", "#", "a/+/b", "a+"] {
            assert_eq!(
                validate_topic_name(bad),
                Err(TopicError::WildcardInTopicName),
                "{bad:?}"
            );
        }
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::NullCharacter));
        assert_eq!(
            validate_topic_name(&"x".repeat(65_536)),
            Err(TopicError::TooLong(65_536))
        );
        assert_eq!(validate_topic_name(&"x".repeat(65_535)), Ok(()));
    }

    #[test]
    fn topic_filters() {
        // Valid examples of §4.7.1.
        for ok in [
            "sport/tennis/player1/#",
            "sport/#",
            "#",
            "+",
            "+/tennis/#",
            "sport/+/player1",
            "/+",
            "+/+",
            "a//b",
            "$share/g/a/+",
            "$share/g/#",
        ] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok:?}");
        }
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
        for bad in [
            "sport/tennis#",
            "sport/tennis/#/ranking",
            "a/#/b",
            "a#",
            "#/",
        ] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(TopicError::InvalidMultiLevelWildcard),
                "{bad:?}"
            );
        }
        for bad in ["sport+", "a+", "+b/c", "sport/+x"] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(TopicError::InvalidSingleLevelWildcard),
                "{bad:?}"
            );
        }
        // Shared subscriptions (bad-inputs D.72).
        for bad in ["$share//t", "$share/p", "$share/p/", "$share/"] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(TopicError::InvalidSharedSubscription),
                "{bad:?}"
            );
        }
        for bad in ["$share/a+b/t", "$share/a#/t", "$share/+/t"] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(TopicError::WildcardInShareName),
                "{bad:?}"
            );
        }
        assert_eq!(
            validate_topic_filter("$share/g/a#"),
            Err(TopicError::InvalidMultiLevelWildcard)
        );
        // Not the shared prefix: an ordinary filter.
        assert_eq!(validate_topic_filter("$shared/x"), Ok(()));
        assert_eq!(split_shared("$share/g/a/b"), Some(("g", "a/b")));
        assert_eq!(split_shared("a/b"), None);
    }

    #[test]
    fn matching_spec_examples() {
        // §4.7.1.2
        for topic in [
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
        ] {
            assert!(matches("sport/tennis/player1/#", topic), "{topic}");
        }
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "anything/at/all"));
        assert!(!matches("sport/tennis/#", "sport"));
        // §4.7.1.3
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(matches("sport/tennis/+", "sport/tennis/player2"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("+/tennis/#", "sport/tennis/x"));
        // §4.7.2
        assert!(!matches("#", "$SYS/monitor/Clients"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        // Exact and case-sensitive.
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "A/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
    }

    /// Found by the `topic` fuzz target (fuzz/): a valid Topic Name is not always a valid Topic
    /// Filter. As a filter, "$share/..." is read as a shared subscription and must have a
    /// ShareName and a filter part; as a name it is only subject to the name rules.
    #[test]
    fn share_prefixed_names_are_names_not_filters() {
        for name in ["$share/", "$share/g", "$share//t"] {
            assert_eq!(validate_topic_name(name), Ok(()), "{name:?}");
            assert_eq!(
                validate_topic_filter(name),
                Err(TopicError::InvalidSharedSubscription),
                "{name:?}"
            );
            // Matched literally, level by level, by an ordinary filter.
            assert!(matches(name, name), "{name:?}");
            assert!(matches("$share/#", name), "{name:?}");
            assert!(!matches("#", name), "{name:?}");
        }
        assert_eq!(validate_topic_name("$share/g/t"), Ok(()));
        assert_eq!(validate_topic_filter("$share/g/t"), Ok(()));
    }

    #[test]
    fn deep_topics_do_not_recurse() {
        let topic = "/".repeat(65_000);
        let filter = "+/".repeat(30_000) + "#";
        assert!(matches(&filter, &topic));
        assert!(matches(&topic, &topic));
        assert_eq!(validate_topic_filter(&filter), Ok(()));
    }
}
