//! Robustness policies where the spec leaves the reaction open (bad-inputs.md F93, F94, G104):
//! per-username login bans, flapping bans per client id, and client ids bound to their user.
//! After each case a canary client must still be served.

use mqttd::mqtt::{ConnAck, Connect, Disconnect, Packet, ProtocolVersion, ReasonCode};

use crate::common::*;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

fn refused(reason: ReasonCode) -> Packet {
    Packet::ConnAck(ConnAck {
        reason,
        ..Default::default()
    })
}

/// CONNECT as `username` (anonymous for `None`), with Session Expiry `expiry` (v5) and Clean
/// Start `clean`.
fn connect_as(
    version: ProtocolVersion,
    client_id: &str,
    login: Option<(&str, &str)>,
    clean: bool,
    expiry: u32,
) -> Packet {
    let mut packet = match login {
        Some((user, password)) => connect_with_credentials(version, client_id, user, password),
        None => connect(version, client_id),
    };
    if let Packet::Connect(c) = &mut packet {
        let c: &mut Connect = c;
        c.clean_start = clean;
        if version.is_v5() && expiry > 0 {
            c.properties.session_expiry_interval = Some(expiry);
        }
    }
    packet
}

/// Sends `connect` on a new connection and returns the client with its CONNACK (`None`:
/// closed without one).
async fn try_connect(broker: &TestBroker, connect: Packet) -> (Client, Option<ConnAck>) {
    let version = match &connect {
        Packet::Connect(c) => c.protocol,
        _ => unreachable!(),
    };
    let mut client = Client::open(broker.addr, version).await;
    client.send(connect).await;
    match client.recv().await {
        Some(Ok(Packet::ConnAck(ack))) => (client, Some(ack)),
        None | Some(Err(_)) => (client, None),
        Some(Ok(other)) => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Connects and expects success; returns the client and Session Present.
async fn accepted(broker: &TestBroker, connect: Packet) -> (Client, bool) {
    match try_connect(broker, connect).await {
        (client, Some(ack)) if ack.reason == ReasonCode::Success => (client, ack.session_present),
        (_, other) => panic!("expected a successful CONNACK, got {other:?}"),
    }
}

/// Sends `connect` and expects the refusing CONNACK `reason`, then the close.
async fn expect_refused(broker: &TestBroker, connect: Packet, reason: ReasonCode) {
    let version = match &connect {
        Packet::Connect(c) => c.protocol,
        _ => unreachable!(),
    };
    let mut client = Client::open(broker.addr, version).await;
    client.send(connect).await;
    client.expect(refused(reason)).await;
    client.expect_closed().await;
}

/// Sends `connect` and expects the connection to close without CONNACK (3.1.1 has no code
/// for Banned).
async fn expect_closed_without_connack(broker: &TestBroker, connect: Packet) {
    let (mut client, ack) = try_connect(broker, connect).await;
    assert_eq!(ack, None, "no CONNACK");
    client.expect_closed().await;
}

async fn assert_alive(client: &mut Client) {
    client.send(Packet::PingReq).await;
    client.expect(Packet::PingResp).await;
}

fn add_user(broker: &TestBroker, username: &str, password: &str) {
    mqttd::db::users::add_user(&broker.db_path.to_string_lossy(), username, password).unwrap();
}

/// Makes the stored hash of `username` unreadable: checking its password becomes an error.
fn corrupt_password_hash(broker: &TestBroker, username: &str) {
    use diesel::RunQueryDsl;
    diesel::sql_query(format!(
        "UPDATE users SET password_hash = 'not a hash' WHERE username = '{username}'"
    ))
    .execute(&mut broker.db())
    .unwrap();
}

// ---- G104: failed logins per username -------------------------------------------------------

#[tokio::test]
async fn g104_failed_logins_for_one_username_ban_it_before_any_password_is_checked() {
    let broker = start_broker_with(|c| {
        c.allow_anonymous = Some(false);
        // Every test client comes from 127.0.0.1: only the per-username limit is under test.
        c.limits.max_auth_failures_per_ip = 0;
        c.limits.max_auth_failures_per_user = 3;
    });
    add_user(&broker, "eve", "right");
    add_user(&broker, "bob", "right");
    // Eve is connected before the attack; her connection is not touched by the ban.
    let (mut eve, _) = accepted(
        &broker,
        connect_as(V5, "eve-1", Some(("eve", "right")), true, 0),
    )
    .await;
    for i in 0..3 {
        let guess = connect_as(V5, &format!("guess-{i}"), Some(("eve", "wrong")), true, 0);
        expect_refused(&broker, guess, ReasonCode::BadUserNameOrPassword).await;
    }
    // Banned: even the right password gets 0x8A (it is not checked), from any client id.
    let right = connect_as(V5, "eve-2", Some(("eve", "right")), true, 0);
    expect_refused(&broker, right, ReasonCode::Banned).await;
    // The ban is decided before the password store is read: with Eve's stored hash made
    // unreadable, a login still gets 0x8A, where a user who is not banned gets 0x88.
    corrupt_password_hash(&broker, "eve");
    let right = connect_as(V5, "eve-2", Some(("eve", "right")), true, 0);
    expect_refused(&broker, right, ReasonCode::Banned).await;
    add_user(&broker, "mallory", "right");
    corrupt_password_hash(&broker, "mallory");
    let other = connect_as(V5, "mallory", Some(("mallory", "right")), true, 0);
    expect_refused(&broker, other, ReasonCode::ServerUnavailable).await;
    // 3.1.1 has no Banned return code: closed without CONNACK, like a banned address.
    expect_closed_without_connack(
        &broker,
        connect_as(V311, "eve-3", Some(("eve", "right")), true, 0),
    )
    .await;
    // Other users, and Eve's open connection, are served.
    let (mut bob, _) = accepted(
        &broker,
        connect_as(V5, "bob-1", Some(("bob", "right")), true, 0),
    )
    .await;
    assert_alive(&mut bob).await;
    assert_alive(&mut eve).await;
    let (mut canary, _) = accepted(
        &broker,
        connect_as(V5, "canary", Some(("bob", "right")), true, 0),
    )
    .await;
    assert_alive(&mut canary).await;
}

#[tokio::test]
async fn g104_per_username_limit_off_leaves_only_the_per_address_limit() {
    let broker = start_broker_with(|c| {
        c.allow_anonymous = Some(false);
        c.limits.max_auth_failures_per_ip = 0;
        c.limits.max_auth_failures_per_user = 0;
    });
    add_user(&broker, "eve", "right");
    for i in 0..5 {
        let guess = connect_as(V5, &format!("guess-{i}"), Some(("eve", "wrong")), true, 0);
        expect_refused(&broker, guess, ReasonCode::BadUserNameOrPassword).await;
    }
    accepted(
        &broker,
        connect_as(V5, "eve", Some(("eve", "right")), true, 0),
    )
    .await;
}

// ---- F93: flapping -------------------------------------------------------------------------

#[tokio::test]
async fn f93_a_client_id_connecting_more_than_15_times_a_minute_is_banned_by_default() {
    // The defaults: 15 accepted connections per client id and minute, then a 300 s ban.
    let broker = start_broker();
    let mut holder = Client::connected(broker.addr, V5, "flap").await;
    for _ in 1..15 {
        let next = Client::connected(broker.addr, V5, "flap").await;
        holder
            .expect(Packet::Disconnect(Disconnect {
                reason: ReasonCode::SessionTakenOver,
                ..Default::default()
            }))
            .await;
        holder.expect_closed().await;
        holder = next;
    }
    // The 16th CONNECT within the minute is refused; the connection holding the id stays.
    expect_refused(&broker, connect(V5, "flap"), ReasonCode::Banned).await;
    expect_closed_without_connack(&broker, connect(V311, "flap")).await;
    assert_alive(&mut holder).await;
    // Other client ids are served.
    let mut other = Client::connected(broker.addr, V5, "steady").await;
    assert_alive(&mut other).await;
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn f93_refused_connects_do_not_count_towards_a_flapping_ban() {
    let broker = start_broker_with(|c| {
        c.limits.max_connects_per_client_id_per_minute = 2;
        c.limits.max_auth_failures_per_ip = 0;
        c.limits.max_auth_failures_per_user = 0;
    });
    add_user(&broker, "alice", "right");
    // Somebody without alice's password cannot get her id banned.
    for _ in 0..5 {
        let guess = connect_as(V5, "dev", Some(("alice", "wrong")), true, 0);
        expect_refused(&broker, guess, ReasonCode::BadUserNameOrPassword).await;
    }
    let (first, _) = accepted(
        &broker,
        connect_as(V5, "dev", Some(("alice", "right")), true, 0),
    )
    .await;
    drop(first);
    let (mut second, _) = accepted(
        &broker,
        connect_as(V5, "dev", Some(("alice", "right")), true, 0),
    )
    .await;
    // The second accepted connection reached the limit of 2.
    let third = connect_as(V5, "dev", Some(("alice", "right")), true, 0);
    expect_refused(&broker, third, ReasonCode::Banned).await;
    assert_alive(&mut second).await;
    // Server-assigned ids are never counted.
    for _ in 0..3 {
        let (mut client, _) = accepted(&broker, connect(V5, "")).await;
        assert_alive(&mut client).await;
    }
    assert_canary(broker.addr).await;
}

// ---- F94: client id bound to its user --------------------------------------------------------

#[tokio::test]
async fn f94_a_client_id_held_by_one_user_is_refused_to_another_user_and_to_anonymous() {
    let broker = start_broker();
    add_user(&broker, "alice", "a-pass");
    add_user(&broker, "bob", "b-pass");
    let (mut alice, _) = accepted(
        &broker,
        connect_as(V5, "dev1", Some(("alice", "a-pass")), true, 0),
    )
    .await;
    // Bob, and an anonymous client, get 0x87; Alice's connection is untouched.
    expect_refused(
        &broker,
        connect_as(V5, "dev1", Some(("bob", "b-pass")), true, 0),
        ReasonCode::NotAuthorized,
    )
    .await;
    expect_refused(&broker, connect(V5, "dev1"), ReasonCode::NotAuthorized).await;
    // 3.1.1: return code 5, Not authorized.
    expect_refused(
        &broker,
        connect_as(V311, "dev1", Some(("bob", "b-pass")), true, 0),
        ReasonCode::NotAuthorized,
    )
    .await;
    assert_alive(&mut alice).await;
    // Alice herself takes the id over as usual [MQTT-3.1.4-3].
    let (mut again, _) = accepted(
        &broker,
        connect_as(V5, "dev1", Some(("alice", "a-pass")), true, 0),
    )
    .await;
    alice
        .expect(Packet::Disconnect(Disconnect {
            reason: ReasonCode::SessionTakenOver,
            ..Default::default()
        }))
        .await;
    assert_alive(&mut again).await;
    // Once she has gone (no stored session), the id is free for anyone.
    again.send(Packet::Disconnect(Disconnect::default())).await;
    again.expect_closed().await;
    let (mut bob, _) = accepted(
        &broker,
        connect_as(V5, "dev1", Some(("bob", "b-pass")), true, 0),
    )
    .await;
    assert_alive(&mut bob).await;
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn f94_an_id_held_anonymously_is_not_bound() {
    let broker = start_broker();
    add_user(&broker, "alice", "a-pass");
    let mut anonymous = Client::connected(broker.addr, V5, "shared").await;
    let (mut alice, _) = accepted(
        &broker,
        connect_as(V5, "shared", Some(("alice", "a-pass")), true, 0),
    )
    .await;
    anonymous
        .expect(Packet::Disconnect(Disconnect {
            reason: ReasonCode::SessionTakenOver,
            ..Default::default()
        }))
        .await;
    // Now Alice holds it, and it is bound to her.
    expect_refused(&broker, connect(V5, "shared"), ReasonCode::NotAuthorized).await;
    assert_alive(&mut alice).await;
}

#[tokio::test]
async fn f94_a_stored_session_stays_bound_to_its_user_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("broker.db");
    let mut broker = start_broker_on(db.clone(), |_| {});
    add_user(&broker, "alice", "a-pass");
    add_user(&broker, "bob", "b-pass");
    let alice = connect_as(V5, "dev2", Some(("alice", "a-pass")), true, 3600);
    let (mut client, _) = accepted(&broker, alice).await;
    client.send(Packet::Disconnect(Disconnect::default())).await;
    client.expect_closed().await;
    // Offline, the stored session is still Alice's: Bob may neither resume nor discard it.
    for clean in [false, true] {
        let bob = connect_as(V5, "dev2", Some(("bob", "b-pass")), clean, 3600);
        expect_refused(&broker, bob, ReasonCode::NotAuthorized).await;
    }
    broker.shutdown();

    let broker = start_broker_on(db, |_| {});
    let bob = connect_as(V5, "dev2", Some(("bob", "b-pass")), false, 3600);
    expect_refused(&broker, bob, ReasonCode::NotAuthorized).await;
    let alice = connect_as(V5, "dev2", Some(("alice", "a-pass")), false, 3600);
    let (mut client, present) = accepted(&broker, alice).await;
    assert!(present, "Bob's attempts left Alice's session as it was");
    assert_alive(&mut client).await;
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn f94_with_binding_off_another_user_takes_the_id_over() {
    let broker = start_broker_with(|c| c.client_id_binding = false);
    add_user(&broker, "alice", "a-pass");
    add_user(&broker, "bob", "b-pass");
    let (mut alice, _) = accepted(
        &broker,
        connect_as(V5, "dev3", Some(("alice", "a-pass")), true, 0),
    )
    .await;
    let (mut bob, _) = accepted(
        &broker,
        connect_as(V5, "dev3", Some(("bob", "b-pass")), true, 0),
    )
    .await;
    alice
        .expect(Packet::Disconnect(Disconnect {
            reason: ReasonCode::SessionTakenOver,
            ..Default::default()
        }))
        .await;
    assert_alive(&mut bob).await;
}
