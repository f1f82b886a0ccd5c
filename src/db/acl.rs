//! The operations behind `mqttd acl add|remove|list --db PATH`.
//!
//! Like the user commands, they open the database themselves and run the migrations, so they
//! work on a fresh file and next to a running broker. A running broker sees a changed rule
//! from the next connection on: each connection loads its rules once, at CONNECT.

use super::{DbError, open_migrated, queries};
use crate::acl::{AclAction, AclPermission, AclRule, AclSubject};
use crate::clock::unix_millis;

/// Adds a rule and returns its id. Fails with [`DbError::InvalidAclTopic`] for a topic that is
/// not a valid rule filter, and [`DbError::InvalidInput`] for an empty username or client id.
pub fn add_rule(
    db_path: &str,
    subject: &AclSubject,
    permission: AclPermission,
    action: AclAction,
    topic: &str,
) -> Result<i64, DbError> {
    queries::add_rule(
        &mut open_migrated(db_path)?,
        subject,
        action,
        permission,
        topic,
        unix_millis(),
    )
}

/// Deletes rule `id`. Fails with [`DbError::NoSuchRule`] if it does not exist.
pub fn remove_rule(db_path: &str, id: i64) -> Result<(), DbError> {
    if queries::remove_rule(&mut open_migrated(db_path)?, id)? {
        Ok(())
    } else {
        Err(DbError::NoSuchRule(id))
    }
}

/// All rules, in id order.
pub fn list_rules(db_path: &str) -> Result<Vec<AclRule>, DbError> {
    queries::list_rules(&mut open_migrated(db_path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::RuleTopicError;

    fn temp_db() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acl.db").display().to_string();
        (dir, path)
    }

    #[test]
    fn cli_add_list_remove() {
        let (_dir, path) = temp_db();
        assert!(
            list_rules(&path).unwrap().is_empty(),
            "works on a fresh file"
        );
        let alice = AclSubject::User("alice".into());
        let first = add_rule(
            &path,
            &alice,
            AclPermission::Allow,
            AclAction::Publish,
            "sensors/%u/#",
        )
        .unwrap();
        let second = add_rule(
            &path,
            &AclSubject::All,
            AclPermission::Deny,
            AclAction::Subscribe,
            "#",
        )
        .unwrap();
        assert!(second > first);

        let lines: Vec<String> = list_rules(&path)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                format!("{first}  user alice  allow  publish  sensors/%u/#"),
                format!("{second}  all  deny  subscribe  #"),
            ]
        );

        remove_rule(&path, first).unwrap();
        assert!(matches!(
            remove_rule(&path, first),
            Err(DbError::NoSuchRule(id)) if id == first
        ));
        let rules = list_rules(&path).unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].id, second);
    }

    #[test]
    fn cli_rejects_invalid_rules() {
        let (_dir, path) = temp_db();
        let add = |subject: AclSubject, topic: &str| {
            add_rule(
                &path,
                &subject,
                AclPermission::Allow,
                AclAction::Receive,
                topic,
            )
        };
        assert!(matches!(
            add(AclSubject::All, "a/x%u"),
            Err(DbError::InvalidAclTopic {
                source: RuleTopicError::PartialSubstitution,
                ..
            })
        ));
        assert!(matches!(
            add(AclSubject::All, "a/#/b"),
            Err(DbError::InvalidAclTopic {
                source: RuleTopicError::Topic(_),
                ..
            })
        ));
        assert!(matches!(
            add(AclSubject::Client(String::new()), "a"),
            Err(DbError::InvalidInput(_))
        ));
        assert!(list_rules(&path).unwrap().is_empty());
    }
}
