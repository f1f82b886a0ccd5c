//! Authorization (see the module comment of src/acl.rs): rules from the `acl_rules` table,
//! loaded at CONNECT, checked on PUBLISH (PUBACK/PUBREC 0x87, QoS 0 dropped), SUBSCRIBE
//! (SUBACK 0x87 per filter), delivery (silently skipped) and the Will; and `mqttd acl ...`;
//! reloading connected clients' rules (SIGHUP, H112/H113) and re-checking retained messages
//! against their publisher (H114).

use std::net::SocketAddr;
use std::process::Command;

use mqttd::acl::{AclAction, AclPermission, AclSubject};
use mqttd::config::AclDefault;
use mqttd::mqtt::{Packet, QoS, ReasonCode, Will};

use crate::common::*;
use crate::retained::{
    V5, assert_next_is_marker, disconnect, msg, options, publish_expect, publish_ok, recv_publish,
    subscribe, subscribe_with,
};

const DENIED: ReasonCode = ReasonCode::NotAuthorized;

fn rule(
    broker: &TestBroker,
    subject: AclSubject,
    permission: AclPermission,
    action: AclAction,
    topic: &str,
) {
    mqttd::db::acl::add_rule(
        &broker.db_path.to_string_lossy(),
        &subject,
        permission,
        action,
        topic,
    )
    .unwrap();
}

fn user(name: &str) -> AclSubject {
    AclSubject::User(name.into())
}

fn add_user(broker: &TestBroker, name: &str, password: &str) {
    mqttd::db::users::add_user(&broker.db_path.to_string_lossy(), name, password).unwrap();
}

/// Connects with a username and password; panics unless the CONNACK is a success.
async fn login(addr: SocketAddr, client_id: &str, username: &str, password: &str) -> Client {
    let mut client = Client::open(addr, V5).await;
    client
        .send(connect_with_credentials(V5, client_id, username, password))
        .await;
    match client.recv().await {
        Some(Ok(Packet::ConnAck(ack))) if ack.reason == ReasonCode::Success => client,
        other => panic!("expected a successful CONNACK for {username:?}, got {other:?}"),
    }
}

/// A broker where alice (password "pw") may publish to `ok/#` only, and an anonymous
/// subscriber (no rule of its own, default allow) that listens to everything.
async fn alice_and_a_listener() -> (TestBroker, Client, Client) {
    let broker = start_broker();
    add_user(&broker, "alice", "pw");
    rule(
        &broker,
        user("alice"),
        AclPermission::Allow,
        AclAction::Publish,
        "ok/#",
    );
    let mut listener = Client::connected(broker.addr, V5, "listener").await;
    subscribe(&mut listener, "#", QoS::ExactlyOnce).await;
    let alice = login(broker.addr, "alice-1", "alice", "pw").await;
    (broker, alice, listener)
}

#[tokio::test]
async fn mqtt_3_4_2_1_denied_qos1_publish_gets_puback_0x87_and_is_not_routed() {
    let (_broker, mut alice, mut listener) = alice_and_a_listener().await;
    publish_expect(
        &mut alice,
        7,
        msg("secret/x", "no", QoS::AtLeastOnce, false),
        DENIED,
    )
    .await;
    assert_next_is_marker(&mut listener, &mut alice, "ok/marker").await;
    disconnect(alice).await;
    disconnect(listener).await;
}

#[tokio::test]
async fn mqtt_3_5_2_1_denied_qos2_publish_gets_pubrec_0x87_and_is_not_routed() {
    let (_broker, mut alice, mut listener) = alice_and_a_listener().await;
    publish_expect(
        &mut alice,
        8,
        msg("secret/x", "no", QoS::ExactlyOnce, false),
        DENIED,
    )
    .await;
    // The refused id is not awaiting PUBREL: reusing it is a new message, and it is allowed.
    publish_ok(&mut alice, 8, msg("ok/q2", "yes", QoS::ExactlyOnce, false)).await;
    assert_eq!(
        recv_publish(&mut listener).await,
        msg("ok/q2", "yes", QoS::ExactlyOnce, false)
    );
    assert_next_is_marker(&mut listener, &mut alice, "ok/marker").await;
    disconnect(alice).await;
    disconnect(listener).await;
}

#[tokio::test]
async fn denied_qos0_publish_is_dropped_silently() {
    let (_broker, mut alice, mut listener) = alice_and_a_listener().await;
    publish_ok(&mut alice, 0, msg("secret/x", "no", QoS::AtMostOnce, false)).await;
    // The connection is still fine and nothing came back for the QoS 0 message.
    alice.send(Packet::PingReq).await;
    alice.expect(Packet::PingResp).await;
    assert_next_is_marker(&mut listener, &mut alice, "ok/marker").await;
    disconnect(alice).await;
    disconnect(listener).await;
}

#[tokio::test]
async fn mqtt_3_9_3_denied_filter_gets_suback_0x87_and_the_others_are_granted() {
    let broker = start_broker();
    add_user(&broker, "bob", "pw");
    rule(
        &broker,
        user("bob"),
        AclPermission::Allow,
        AclAction::Subscribe,
        "ok/#",
    );
    rule(
        &broker,
        user("bob"),
        AclPermission::Allow,
        AclAction::Receive,
        "#",
    );
    let mut bob = login(broker.addr, "bob-1", "bob", "pw").await;
    let reasons = subscribe_with(
        &mut bob,
        3,
        &[
            ("ok/a", options(QoS::AtLeastOnce)),
            ("secret/#", options(QoS::AtLeastOnce)),
            ("ok/+/b", options(QoS::ExactlyOnce)),
            ("#", options(QoS::AtMostOnce)),
        ],
    )
    .await;
    assert_eq!(
        reasons,
        [
            ReasonCode::GrantedQoS1,
            DENIED,
            ReasonCode::GrantedQoS2,
            DENIED
        ]
    );
    // The refused filters are not active.
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    publish_ok(
        &mut publisher,
        1,
        msg("secret/x", "no", QoS::AtLeastOnce, false),
    )
    .await;
    publish_ok(
        &mut publisher,
        1,
        msg("ok/x/b", "yes", QoS::AtLeastOnce, false),
    )
    .await;
    assert_eq!(
        recv_publish(&mut bob).await,
        msg("ok/x/b", "yes", QoS::AtLeastOnce, false)
    );
    assert_next_is_marker(&mut bob, &mut publisher, "ok/a").await;
    disconnect(publisher).await;
    disconnect(bob).await;
}

#[tokio::test]
async fn a_receive_deny_skips_the_delivery_silently() {
    let broker = start_broker();
    add_user(&broker, "carol", "pw");
    rule(
        &broker,
        user("carol"),
        AclPermission::Allow,
        AclAction::Subscribe,
        "news/#",
    );
    rule(
        &broker,
        user("carol"),
        AclPermission::Allow,
        AclAction::Receive,
        "news/#",
    );
    rule(
        &broker,
        user("carol"),
        AclPermission::Deny,
        AclAction::Receive,
        "news/private/#",
    );
    let mut carol = login(broker.addr, "carol-1", "carol", "pw").await;
    subscribe(&mut carol, "news/#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publish_ok(&mut publisher, 1, msg("news/private/x", "no", qos, false)).await;
    }
    // A retained message under the denied topics is not sent on subscribe either.
    publish_ok(
        &mut publisher,
        2,
        msg("news/private/r", "no", QoS::AtLeastOnce, true),
    )
    .await;
    subscribe(&mut carol, "news/+/r", QoS::AtLeastOnce).await;
    assert_next_is_marker(&mut carol, &mut publisher, "news/public").await;
    disconnect(publisher).await;
    disconnect(carol).await;
}

#[tokio::test]
async fn username_and_client_id_substitution() {
    let broker = start_broker_with(|c| c.acl_default = AclDefault::Deny);
    add_user(&broker, "alice", "pw");
    for topic in ["users/%u/#", "clients/%c/#"] {
        rule(
            &broker,
            AclSubject::All,
            AclPermission::Allow,
            AclAction::Publish,
            topic,
        );
    }
    let mut alice = login(broker.addr, "alice-1", "alice", "pw").await;
    let cases = [
        ("users/alice/x", ReasonCode::Success),
        ("users/alice", ReasonCode::Success),
        ("users/bob/x", DENIED),
        ("users/%u/x", DENIED),
        ("clients/alice-1/y", ReasonCode::Success),
        ("clients/alice/y", DENIED),
        ("clients/other/y", DENIED),
    ];
    for (i, (topic, reason)) in cases.into_iter().enumerate() {
        let message = msg(topic, "p", QoS::AtLeastOnce, false);
        publish_expect(&mut alice, i as u16 + 1, message, reason).await;
    }
    disconnect(alice).await;
}

#[tokio::test]
async fn cve_2017_7650_usernames_and_client_ids_plus_and_hash_gain_no_wildcard_access() {
    let broker = start_broker_with(|c| c.acl_default = AclDefault::Deny);
    for name in ["+", "#"] {
        add_user(&broker, name, "pw");
    }
    add_user(&broker, "bob", "pw");
    let all_allow = |action, topic| {
        rule(
            &broker,
            AclSubject::All,
            AclPermission::Allow,
            action,
            topic,
        );
    };
    all_allow(AclAction::Subscribe, "users/%u/#");
    all_allow(AclAction::Receive, "users/%u/#");
    all_allow(AclAction::Publish, "users/%u/#");
    all_allow(AclAction::Subscribe, "clients/%c");

    for name in ["+", "#"] {
        let id = if name == "+" { "plus" } else { "hash" };
        let mut client = login(broker.addr, id, name, "pw").await;
        let reasons = subscribe_with(
            &mut client,
            1,
            &[
                ("users/#", options(QoS::AtMostOnce)),
                ("users/+/x", options(QoS::AtMostOnce)),
                ("users/+", options(QoS::AtMostOnce)),
                ("users/bob/#", options(QoS::AtMostOnce)),
            ],
        )
        .await;
        assert_eq!(reasons, [DENIED; 4], "user {name:?}");
        publish_expect(
            &mut client,
            2,
            msg("users/bob/x", "p", QoS::AtLeastOnce, false),
            DENIED,
        )
        .await;
        disconnect(client).await;
    }
    // A client id '+' does not stand for every client id.
    let mut plus = login(broker.addr, "+", "bob", "pw").await;
    let reasons = subscribe_with(
        &mut plus,
        1,
        &[
            ("clients/+", options(QoS::AtMostOnce)),
            ("clients/other", options(QoS::AtMostOnce)),
            ("users/bob/#", options(QoS::AtMostOnce)),
        ],
    )
    .await;
    assert_eq!(reasons, [DENIED, DENIED, ReasonCode::Success]);
    disconnect(plus).await;
}

#[tokio::test]
async fn a_client_with_a_rule_of_its_own_is_denied_what_no_rule_allows() {
    let broker = start_broker();
    add_user(&broker, "alice", "pw");
    add_user(&broker, "bob", "pw");
    rule(
        &broker,
        user("alice"),
        AclPermission::Allow,
        AclAction::Publish,
        "a/#",
    );
    let mut alice = login(broker.addr, "alice-1", "alice", "pw").await;
    publish_ok(&mut alice, 1, msg("a/b", "p", QoS::AtLeastOnce, false)).await;
    publish_expect(
        &mut alice,
        2,
        msg("b", "p", QoS::AtLeastOnce, false),
        DENIED,
    )
    .await;
    assert_eq!(
        subscribe_with(&mut alice, 3, &[("a/b", options(QoS::AtMostOnce))]).await,
        [DENIED],
        "a rule of any action closes the default"
    );
    // Bob has no rule: the default (allow) applies to him.
    let mut bob = login(broker.addr, "bob-1", "bob", "pw").await;
    publish_ok(&mut bob, 1, msg("b", "p", QoS::AtLeastOnce, false)).await;
    subscribe(&mut bob, "a/b", QoS::AtMostOnce).await;
    // A client-id rule closes the default in the same way, also for anonymous clients.
    rule(
        &broker,
        AclSubject::Client("dev-7".into()),
        AclPermission::Allow,
        AclAction::Publish,
        "dev/7",
    );
    let mut device = Client::connected(broker.addr, V5, "dev-7").await;
    publish_ok(&mut device, 1, msg("dev/7", "p", QoS::AtLeastOnce, false)).await;
    publish_expect(
        &mut device,
        2,
        msg("dev/8", "p", QoS::AtLeastOnce, false),
        DENIED,
    )
    .await;
    for c in [alice, bob, device] {
        disconnect(c).await;
    }
}

#[tokio::test]
async fn acl_default_deny_refuses_clients_without_rules() {
    let broker = start_broker_with(|c| c.acl_default = AclDefault::Deny);
    let mut anonymous = Client::connected(broker.addr, V5, "anon").await;
    publish_expect(
        &mut anonymous,
        1,
        msg("any/topic", "p", QoS::AtLeastOnce, false),
        DENIED,
    )
    .await;
    publish_expect(
        &mut anonymous,
        2,
        msg("any/topic", "p", QoS::ExactlyOnce, false),
        DENIED,
    )
    .await;
    assert_eq!(
        subscribe_with(&mut anonymous, 3, &[("#", options(QoS::AtMostOnce))]).await,
        [DENIED]
    );
    // An `all` rule opens what it names, and only that.
    rule(
        &broker,
        AclSubject::All,
        AclPermission::Allow,
        AclAction::Publish,
        "public/#",
    );
    let mut later = Client::connected(broker.addr, V5, "later").await;
    publish_ok(&mut later, 1, msg("public/x", "p", QoS::AtLeastOnce, false)).await;
    publish_expect(
        &mut later,
        2,
        msg("other", "p", QoS::AtLeastOnce, false),
        DENIED,
    )
    .await;
    disconnect(anonymous).await;
    disconnect(later).await;
}

#[tokio::test]
async fn section_4_7_2_publishing_to_sys_is_refused_even_without_rules() {
    let broker = start_broker();
    let mut listener = Client::connected(broker.addr, V5, "listener").await;
    subscribe(&mut listener, "$SYS/#", QoS::AtLeastOnce).await;
    subscribe(&mut listener, "marker", QoS::AtLeastOnce).await;
    let mut client = Client::connected(broker.addr, V5, "sneaky").await;
    for (id, qos) in [(1, QoS::AtLeastOnce), (2, QoS::ExactlyOnce)] {
        let message = msg("$SYS/broker/uptime", "forged", qos, false);
        publish_expect(&mut client, id, message, DENIED).await;
    }
    publish_ok(
        &mut client,
        0,
        msg("$SYS/x", "forged", QoS::AtMostOnce, true),
    )
    .await;
    assert_next_is_marker(&mut listener, &mut client, "marker").await;
    // Nor was the refused retained message stored.
    let mut later = Client::connected(broker.addr, V5, "later").await;
    subscribe(&mut later, "$SYS/#", QoS::AtLeastOnce).await;
    subscribe(&mut later, "marker", QoS::AtLeastOnce).await;
    assert_next_is_marker(&mut later, &mut client, "marker").await;
    assert_eq!(recv_publish(&mut listener).await.topic, "marker");
    for c in [client, listener, later] {
        disconnect(c).await;
    }
}

#[tokio::test]
async fn the_will_is_not_published_to_a_topic_the_client_may_not_publish_to() {
    let broker = start_broker();
    add_user(&broker, "alice", "pw");
    rule(
        &broker,
        user("alice"),
        AclPermission::Allow,
        AclAction::Publish,
        "ok/#",
    );
    let mut listener = Client::connected(broker.addr, V5, "listener").await;
    subscribe(&mut listener, "#", QoS::AtLeastOnce).await;
    for (id, topic) in [("alice-1", "forbidden/will"), ("alice-2", "ok/will")] {
        let Packet::Connect(mut c) = connect_with_credentials(V5, id, "alice", "pw") else {
            unreachable!()
        };
        c.will = Some(Will {
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
            topic: topic.into(),
            payload: "gone".into(),
        });
        let mut alice = Client::open(broker.addr, V5).await;
        alice.send(Packet::Connect(c)).await;
        assert!(
            matches!(alice.recv().await, Some(Ok(Packet::ConnAck(a))) if a.reason == ReasonCode::Success)
        );
        drop(alice);
        crate::will::wait_until_disconnected(&broker, id).await;
    }
    // Only the allowed Will arrives, and it is the first thing that does.
    assert_eq!(
        recv_publish(&mut listener).await,
        msg("ok/will", "gone", QoS::AtLeastOnce, false)
    );
    let mut marker = Client::connected(broker.addr, V5, "marker").await;
    assert_next_is_marker(&mut listener, &mut marker, "ok/marker").await;
    disconnect(marker).await;
    disconnect(listener).await;
}

fn mqttd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mqttd"))
        .args(args)
        .output()
        .expect("run mqttd")
}

#[tokio::test]
async fn cli_acl_add_list_remove_and_the_broker_applies_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("acl.db");
    let db = db_path.to_str().unwrap();
    let ok = |args: &[&str]| {
        let out = mqttd(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let added = ok(&[
        "acl",
        "add",
        "--user",
        "alice",
        "allow",
        "publish",
        "sensors/%u/#",
        "--db",
        db,
    ]);
    assert_eq!(added, "added rule 1\n");
    ok(&["acl", "add", "--all", "deny", "subscribe", "#", "--db", db]);
    ok(&[
        "acl", "add", "--client", "dev-1", "allow", "receive", "x/+", "--db", db,
    ]);
    assert_eq!(
        ok(&["acl", "list", "--db", db]),
        "1  user alice  allow  publish  sensors/%u/#\n\
         2  all  deny  subscribe  #\n\
         3  client dev-1  allow  receive  x/+\n"
    );
    assert_eq!(ok(&["acl", "remove", "3", "--db", db]), "removed rule 3\n");
    // Refused: an unknown id, a bad topic, a bad permission or action, no subject.
    for args in [
        &["acl", "remove", "3", "--db", db][..],
        &[
            "acl", "add", "--all", "allow", "publish", "a/#/b", "--db", db,
        ],
        &[
            "acl", "add", "--all", "allow", "publish", "a/x%u", "--db", db,
        ],
        &["acl", "add", "--all", "permit", "publish", "a", "--db", db],
        &["acl", "add", "--all", "allow", "write", "a", "--db", db],
        &["acl", "add", "allow", "publish", "a", "--db", db],
    ] {
        assert!(!mqttd(args).status.success(), "{args:?} must fail");
    }
    assert_eq!(
        ok(&["acl", "list", "--db", db]),
        "1  user alice  allow  publish  sensors/%u/#\n2  all  deny  subscribe  #\n"
    );

    // A broker on that database applies them.
    mqttd::db::users::add_user(db, "alice", "pw").unwrap();
    let broker = start_broker_on(db_path.clone(), |_| {});
    let mut alice = login(broker.addr, "alice-1", "alice", "pw").await;
    publish_ok(
        &mut alice,
        1,
        msg("sensors/alice/t", "p", QoS::AtLeastOnce, false),
    )
    .await;
    publish_expect(
        &mut alice,
        2,
        msg("sensors/bob/t", "p", QoS::AtLeastOnce, false),
        DENIED,
    )
    .await;
    assert_eq!(
        subscribe_with(&mut alice, 3, &[("#", options(QoS::AtMostOnce))]).await,
        [DENIED]
    );
    disconnect(alice).await;
}

/// H113: read access revoked while a persistent session is offline with queued messages: after
/// the reconnect (which loads the new rules) nothing more is delivered, queued messages
/// included (CVE-2021-34434).
#[tokio::test]
async fn h113_revoked_read_access_stops_queued_messages_of_a_persistent_session() {
    let broker = start_broker();
    let Packet::Connect(mut c) = connect(V5, "durable-reader") else {
        unreachable!()
    };
    c.properties.session_expiry_interval = Some(600);
    let mut reader = Client::open(broker.addr, V5).await;
    reader.send(Packet::Connect(c.clone())).await;
    assert!(matches!(reader.recv().await, Some(Ok(Packet::ConnAck(_)))));
    subscribe(&mut reader, "secret/#", QoS::AtLeastOnce).await;
    disconnect(reader).await;
    let mut publisher = Client::connected(broker.addr, V5, "publisher").await;
    publish_ok(
        &mut publisher,
        1,
        msg("secret/a", "queued", QoS::AtLeastOnce, false),
    )
    .await;
    rule(
        &broker,
        AclSubject::Client("durable-reader".into()),
        AclPermission::Deny,
        AclAction::Receive,
        "secret/#",
    );
    for action in [AclAction::Subscribe, AclAction::Receive] {
        rule(
            &broker,
            AclSubject::Client("durable-reader".into()),
            AclPermission::Allow,
            action,
            "marker",
        );
    }

    c.clean_start = false;
    let mut reader = Client::open(broker.addr, V5).await;
    reader.send(Packet::Connect(c)).await;
    match reader.recv().await {
        Some(Ok(Packet::ConnAck(ack))) => assert!(ack.session_present),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    subscribe(&mut reader, "marker", QoS::AtMostOnce).await;
    assert_next_is_marker(&mut reader, &mut publisher, "marker").await;
}

// ---- reloading the rules of connected clients (SIGHUP, `Broker::reload_acl`) -----------------

fn client(id: &str) -> AclSubject {
    AclSubject::Client(id.into())
}

/// A client that may subscribe to and receive `marker` (to stay usable once it has a rule of
/// its own, which denies it everything no rule allows).
fn allow_marker(broker: &TestBroker, client_id: &str) {
    for action in [AclAction::Subscribe, AclAction::Receive] {
        rule(
            broker,
            client(client_id),
            AclPermission::Allow,
            action,
            "marker",
        );
    }
}

/// H113, online: a connected subscriber loses read access; after the reload nothing more is
/// delivered on its existing subscription, including messages already waiting in the session
/// (here held back by Receive Maximum 1), and the subscription itself is kept.
#[tokio::test]
async fn h113_a_reload_stops_deliveries_to_a_connected_subscriber_queued_ones_included() {
    let broker = start_broker();
    let Packet::Connect(mut c) = connect(V5, "reader") else {
        unreachable!()
    };
    c.properties.receive_maximum = Some(1);
    let mut reader = Client::open(broker.addr, V5).await;
    reader.send(Packet::Connect(c)).await;
    assert!(matches!(reader.recv().await, Some(Ok(Packet::ConnAck(_)))));
    subscribe(&mut reader, "secret/#", QoS::AtLeastOnce).await;
    subscribe(&mut reader, "marker", QoS::AtMostOnce).await;
    let mut publisher = Client::connected(broker.addr, V5, "publisher").await;
    publish_ok(
        &mut publisher,
        1,
        msg("secret/a", "before", QoS::AtLeastOnce, false),
    )
    .await;
    assert_eq!(
        recv_publish(&mut reader).await,
        msg("secret/a", "before", QoS::AtLeastOnce, false)
    );

    // One message in flight (not acknowledged), two more waiting behind Receive Maximum 1.
    for payload in ["in flight", "queued 1", "queued 2"] {
        publish_ok(
            &mut publisher,
            2,
            msg("secret/b", payload, QoS::AtLeastOnce, false),
        )
        .await;
    }
    let in_flight = match reader.recv().await {
        Some(Ok(Packet::Publish(p))) => *p,
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    assert_eq!(&in_flight.payload[..], b"in flight");

    rule(
        &broker,
        client("reader"),
        AclPermission::Deny,
        AclAction::Receive,
        "secret/#",
    );
    allow_marker(&broker, "reader");
    let reload = broker.reload_acl().await;
    assert_eq!((reload.reloaded, reload.failed), (2, 0), "{reload:?}");

    // Acknowledging the message already written frees the window: the queued ones are checked
    // against the new rules as they are written, and skipped.
    reader
        .send(Packet::PubAck(mqttd::mqtt::Ack {
            packet_id: in_flight.packet_id.unwrap(),
            ..Default::default()
        }))
        .await;
    publish_ok(
        &mut publisher,
        3,
        msg("secret/c", "after", QoS::AtLeastOnce, false),
    )
    .await;
    assert_next_is_marker(&mut reader, &mut publisher, "marker").await;
    // The subscription was kept (Mosquitto keeps it too): only the receive check filters.
    let reasons = subscribe_with(
        &mut reader,
        9,
        &[("secret/#", crate::retained::options(QoS::AtLeastOnce))],
    )
    .await;
    assert_eq!(reasons, [DENIED], "subscribing again is checked afresh");
    disconnect(reader).await;
    disconnect(publisher).await;
}

#[tokio::test]
async fn a_reload_revokes_publish_access_of_a_connected_client() {
    let broker = start_broker();
    let mut listener = Client::connected(broker.addr, V5, "listener").await;
    subscribe(&mut listener, "#", QoS::AtLeastOnce).await;
    let mut writer = Client::connected(broker.addr, V5, "writer").await;
    publish_ok(
        &mut writer,
        1,
        msg("secret/x", "yes", QoS::AtLeastOnce, false),
    )
    .await;
    assert_eq!(
        recv_publish(&mut listener).await,
        msg("secret/x", "yes", QoS::AtLeastOnce, false)
    );
    rule(
        &broker,
        client("writer"),
        AclPermission::Deny,
        AclAction::Publish,
        "secret/#",
    );
    rule(
        &broker,
        client("writer"),
        AclPermission::Allow,
        AclAction::Publish,
        "ok/#",
    );
    assert_eq!(broker.reload_acl().await.reloaded, 2);
    publish_expect(
        &mut writer,
        2,
        msg("secret/x", "no", QoS::AtLeastOnce, false),
        DENIED,
    )
    .await;
    assert_next_is_marker(&mut listener, &mut writer, "ok/marker").await;
    disconnect(writer).await;
    disconnect(listener).await;
}

/// H112: when the rules cannot be read (here a corrupt rule row), every session keeps the rules
/// it had, the reload says so, and a later reload that works applies the new rules.
#[tokio::test]
async fn h112_a_failed_reload_keeps_the_previous_rules() {
    use diesel::connection::SimpleConnection;

    let broker = start_broker();
    let mut reader = Client::connected(broker.addr, V5, "reader").await;
    subscribe(&mut reader, "secret/#", QoS::AtLeastOnce).await;
    subscribe(&mut reader, "marker", QoS::AtMostOnce).await;
    let mut publisher = Client::connected(broker.addr, V5, "publisher").await;
    rule(
        &broker,
        client("reader"),
        AclPermission::Deny,
        AclAction::Receive,
        "secret/#",
    );
    allow_marker(&broker, "reader");
    // Only a hand-edited database gets past the CHECK constraints.
    let corrupt = "PRAGMA ignore_check_constraints = ON; \
        INSERT INTO acl_rules (subject_kind, subject, action, permission, topic, created_at_ms) \
        VALUES ('all', NULL, 'PUBLISH', 'allow', 't', 0);";
    broker.db().batch_execute(corrupt).unwrap();

    let reload = broker.reload_acl().await;
    assert_eq!((reload.reloaded, reload.failed), (0, 2), "{reload:?}");
    assert!(
        reload.error.as_deref().unwrap_or("").contains("acl_rules"),
        "{reload:?}"
    );
    // The old rules (allow everything) are still in force.
    publish_ok(
        &mut publisher,
        1,
        msg("secret/a", "still", QoS::AtLeastOnce, false),
    )
    .await;
    assert_eq!(
        recv_publish(&mut reader).await,
        msg("secret/a", "still", QoS::AtLeastOnce, false)
    );

    broker
        .db()
        .batch_execute("DELETE FROM acl_rules WHERE action = 'PUBLISH';")
        .unwrap();
    let reload = broker.reload_acl().await;
    assert_eq!((reload.reloaded, reload.failed), (2, 0), "{reload:?}");
    publish_ok(
        &mut publisher,
        2,
        msg("secret/b", "no", QoS::AtLeastOnce, false),
    )
    .await;
    assert_next_is_marker(&mut reader, &mut publisher, "marker").await;
    disconnect(reader).await;
    disconnect(publisher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_reloads_the_rules_of_connected_clients_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("daemon.db");
    let config = dir.path().join("mqttd.toml");
    std::fs::write(
        &config,
        format!("db_path = {db:?}\nallow_anonymous = true\n[[listener]]\nbind = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let (child, addr) = crate::cli::spawn_daemon_with(
        Command::new(env!("CARGO_BIN_EXE_mqttd"))
            .arg("--config")
            .arg(&config),
    );
    // Killed if the test fails half-way, so no daemon outlives it.
    struct Daemon(std::process::Child);
    impl Drop for Daemon {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Daemon(child);
    let pid = child.0.id().to_string();
    let mut reader = Client::connected(addr, V5, "reader").await;
    subscribe(&mut reader, "secret/#", QoS::AtMostOnce).await;
    subscribe(&mut reader, "marker", QoS::AtMostOnce).await;
    let mut publisher = Client::connected(addr, V5, "publisher").await;
    let db = db.to_str().unwrap();
    for args in [
        ["--client", "reader", "deny", "receive", "secret/#"],
        ["--client", "reader", "allow", "subscribe", "marker"],
        ["--client", "reader", "allow", "receive", "marker"],
    ] {
        let out = mqttd(&[&["acl", "add"][..], &args[..], &["--db", db][..]].concat());
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let status = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(status.success());
    // The signal is handled asynchronously: publish until the secret no longer comes through.
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        publish_ok(
            &mut publisher,
            0,
            msg("secret/x", "?", QoS::AtMostOnce, false),
        )
        .await;
        publish_ok(
            &mut publisher,
            0,
            msg("marker", "m", QoS::AtMostOnce, false),
        )
        .await;
        let first = recv_publish(&mut reader).await;
        if first.topic == "marker" {
            break;
        }
        assert_eq!(recv_publish(&mut reader).await.topic, "marker");
        assert!(
            std::time::Instant::now() < deadline,
            "the rules were not reloaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    disconnect(reader).await;
    disconnect(publisher).await;
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let exit = tokio::task::block_in_place(|| child.0.wait()).unwrap();
    assert!(exit.success(), "{exit:?}");
}

// ---- H114: retained messages whose publisher lost write access --------------------------------

/// alice (a user) publishes a retained message; she then loses publish access to its topic.
/// Returns the broker and the retained topic.
async fn retained_by_alice_who_loses_write_access(
    adjust: impl FnOnce(&mut mqttd::Config),
) -> TestBroker {
    let broker = start_broker_with(adjust);
    add_user(&broker, "alice", "pw");
    rule(
        &broker,
        user("alice"),
        AclPermission::Allow,
        AclAction::Publish,
        "news/#",
    );
    let mut alice = login(broker.addr, "alice-1", "alice", "pw").await;
    publish_ok(
        &mut alice,
        1,
        msg("news/alice", "retained", QoS::AtLeastOnce, true),
    )
    .await;
    disconnect(alice).await;
    // While alice may publish there, new subscribers get it.
    let mut early = Client::connected(broker.addr, V5, "early").await;
    subscribe(&mut early, "news/#", QoS::AtLeastOnce).await;
    assert_eq!(
        recv_publish(&mut early).await,
        msg("news/alice", "retained", QoS::AtLeastOnce, true)
    );
    disconnect(early).await;
    // Revoked for her username (the message only names her client id).
    rule(
        &broker,
        user("alice"),
        AclPermission::Deny,
        AclAction::Publish,
        "news/#",
    );
    broker
}

#[tokio::test]
async fn h114_a_retained_message_whose_publisher_lost_write_access_is_not_served() {
    let broker = retained_by_alice_who_loses_write_access(|_| {}).await;
    let mut publisher = Client::connected(broker.addr, V5, "other").await;
    publish_ok(
        &mut publisher,
        1,
        msg("news/other", "kept", QoS::AtLeastOnce, true),
    )
    .await;
    for session_expiry in [None, Some(600)] {
        let Packet::Connect(mut c) = connect(V5, "late") else {
            unreachable!()
        };
        c.properties.session_expiry_interval = session_expiry;
        let mut late = Client::open(broker.addr, V5).await;
        late.send(Packet::Connect(c)).await;
        assert!(matches!(late.recv().await, Some(Ok(Packet::ConnAck(_)))));
        subscribe(&mut late, "news/#", QoS::AtLeastOnce).await;
        // Only the retained message of a publisher that may still publish it.
        assert_eq!(
            recv_publish(&mut late).await,
            msg("news/other", "kept", QoS::AtLeastOnce, true)
        );
        assert_next_is_marker(&mut late, &mut publisher, "news/marker").await;
        disconnect(late).await;
    }
    // The persistent session does not get the skipped message on resuming either.
    let Packet::Connect(mut c) = connect(V5, "late") else {
        unreachable!()
    };
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    let mut late = Client::open(broker.addr, V5).await;
    late.send(Packet::Connect(c)).await;
    match late.recv().await {
        Some(Ok(Packet::ConnAck(ack))) => assert!(ack.session_present),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert_next_is_marker(&mut late, &mut publisher, "news/marker").await;
    disconnect(late).await;
    disconnect(publisher).await;
}

#[tokio::test]
async fn h114_retained_recheck_publisher_false_serves_it_as_mosquitto_does_by_default() {
    let broker =
        retained_by_alice_who_loses_write_access(|c| c.retained_recheck_publisher = false).await;
    let mut late = Client::connected(broker.addr, V5, "late").await;
    subscribe(&mut late, "news/#", QoS::AtLeastOnce).await;
    assert_eq!(
        recv_publish(&mut late).await,
        msg("news/alice", "retained", QoS::AtLeastOnce, true)
    );
    disconnect(late).await;
}
