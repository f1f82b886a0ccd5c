//! The `[http]` operations endpoint: `/metrics` (Prometheus text format 0.0.4), `/healthz`, the
//! status page and the admin API, over real TCP with a plain HTTP/1.1 client.

use std::net::SocketAddr;
use std::process::Command;

use bytes::Bytes;
use mqttd::config::HttpConfig;
use mqttd::mqtt::{
    Ack, Disconnect, Packet, Properties, PropertyValues, ProtocolVersion, Publish, QoS, ReasonCode,
    SubAck, Subscribe, SubscriptionOptions,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// A broker with the HTTP server on an ephemeral port.
fn start_with_http() -> (TestBroker, SocketAddr) {
    let broker =
        start_broker_with(|c| c.http = Some(HttpConfig::new("127.0.0.1:0".parse().unwrap())));
    let http = broker
        .http_addr
        .expect("the broker reports its HTTP address");
    (broker, http)
}

/// One HTTP/1.1 request on a fresh connection: (status, headers, body).
async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    request_with(addr, method, path, "").await
}

/// `request` with more header lines (each ending in CRLF).
async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut response))
        .await
        .expect("timed out waiting for the HTTP response")
        .expect("read");
    let response = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a complete head");
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    (status, headers.to_ascii_lowercase(), body.to_owned())
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    request(addr, "GET", path).await
}

/// The value of the sample `name` (no labels) in a scrape.
fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

/// `sample` for a float value (a histogram's `_sum`).
fn sample_f64(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

async fn scrape(addr: SocketAddr) -> String {
    let (status, headers, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        headers.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{headers}"
    );
    body
}

#[tokio::test]
async fn metrics_follow_clients_subscriptions_and_publishes() {
    let (broker, http) = start_with_http();
    let text = scrape(http).await;
    for line in [
        "# HELP mqttd_messages_received_total PUBLISH packets received from clients.",
        "# TYPE mqttd_messages_received_total counter",
        "# TYPE mqttd_messages_sent_total counter",
        "# TYPE mqttd_dropped_qos0_total counter",
        "# TYPE mqttd_commits_failed_total counter",
        "# TYPE mqttd_connections gauge",
        "# TYPE mqttd_clients_connected gauge",
        "# TYPE mqttd_subscriptions gauge",
        "# TYPE mqttd_retained_messages gauge",
        "# TYPE mqttd_persistent_sessions gauge",
        "# TYPE mqttd_queued_messages gauge",
        "# TYPE mqttd_bytes_received_total counter",
        "# TYPE mqttd_bytes_sent_total counter",
        "# TYPE mqttd_auth_failures_total counter",
        "# TYPE mqttd_logins_banned_total counter",
        "# TYPE mqttd_commit_duration_seconds histogram",
        "# TYPE mqttd_commit_batch_ops histogram",
        "# TYPE mqttd_uptime_seconds gauge",
        "# TYPE mqttd_build_info gauge",
        concat!(
            "mqttd_build_info{version=\"",
            env!("CARGO_PKG_VERSION"),
            "\"} 1"
        ),
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
    }
    for qos in 0..3 {
        let received = format!("mqttd_messages_received_total{{qos=\"{qos}\"}}");
        assert_eq!(sample(&text, &received), 0);
    }
    assert_eq!(sample(&text, "mqttd_bytes_received_total{qos=\"1\"}"), 0);
    assert_eq!(sample(&text, "mqttd_clients_connected"), 0);
    assert_eq!(sample(&text, "mqttd_connections"), 0);

    // A persistent session with one QoS 1 subscription, which publishes a QoS 1 message to
    // itself (PUBACK: the broker has counted, stored and routed it), and does not acknowledge
    // the copy it gets: it stays queued for the session.
    let mut client = Client::open(broker.addr, V5).await;
    let Packet::Connect(mut connect) = connect(V5, "metered") else {
        unreachable!()
    };
    connect.properties.session_expiry_interval = Some(600);
    client.send(Packet::Connect(connect)).await;
    match client.recv().await {
        Some(Ok(Packet::ConnAck(ack))) if ack.reason == ReasonCode::Success => {}
        other => panic!("expected a successful CONNACK, got {other:?}"),
    }
    client
        .send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(
                "metered/#".into(),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            )],
        }))
        .await;
    client
        .expect(Packet::SubAck(SubAck {
            packet_id: 1,
            properties: Properties::default(),
            reasons: vec![ReasonCode::GrantedQoS1],
        }))
        .await;
    client
        .send(Packet::Publish(Box::new(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "metered/a".into(),
            packet_id: Some(2),
            properties: Properties::default(),
            payload: Bytes::from_static(b"hello"),
        })))
        .await;
    // The PUBACK and the delivered copy, in either order.
    let mut delivered_id = None;
    let mut acked = false;
    while delivered_id.is_none() || !acked {
        match client.recv().await {
            Some(Ok(Packet::PubAck(ack))) if ack.packet_id == 2 => acked = true,
            Some(Ok(Packet::Publish(p))) if &p.payload[..] == b"hello" => {
                delivered_id = p.packet_id;
            }
            other => panic!("expected PUBACK and PUBLISH, got {other:?}"),
        }
    }

    let text = scrape(http).await;
    assert_eq!(sample(&text, "mqttd_messages_received_total{qos=\"0\"}"), 0);
    assert_eq!(sample(&text, "mqttd_messages_received_total{qos=\"1\"}"), 1);
    assert_eq!(sample(&text, "mqttd_messages_sent_total{qos=\"1\"}"), 1);
    assert_eq!(sample(&text, "mqttd_bytes_received_total{qos=\"1\"}"), 5);
    assert_eq!(sample(&text, "mqttd_bytes_sent_total{qos=\"1\"}"), 5);
    assert_eq!(sample(&text, "mqttd_queued_messages"), 1);
    // Persistent-session state was committed (at CONNECT, SUBSCRIBE and the message).
    let commits = sample(&text, "mqttd_commits_total");
    assert!(commits > 0, "{text}");
    assert!(
        sample(&text, "mqttd_commit_duration_seconds_count") > 0,
        "{text}"
    );
    assert!(
        sample(&text, "mqttd_commit_duration_seconds_bucket{le=\"+Inf\"}") > 0,
        "{text}"
    );
    assert!(sample(&text, "mqttd_commit_batch_ops_count") > 0, "{text}");
    assert!(
        sample_f64(&text, "mqttd_commit_batch_ops_sum") >= 1.0,
        "{text}"
    );
    assert_eq!(sample(&text, "mqttd_connections"), 1);
    assert_eq!(sample(&text, "mqttd_clients_connected"), 1);
    assert_eq!(sample(&text, "mqttd_subscriptions"), 1);
    assert_eq!(sample(&text, "mqttd_retained_messages"), 1);
    assert_eq!(sample(&text, "mqttd_persistent_sessions"), 1);

    // Once acknowledged, nothing is queued.
    client
        .send(Packet::PubAck(Ack {
            packet_id: delivered_id.unwrap(),
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }))
        .await;
    let deadline = std::time::Instant::now() + TIMEOUT;
    while sample(&scrape(http).await, "mqttd_queued_messages") != 0 {
        assert!(std::time::Instant::now() < deadline, "still queued");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(client);
}

#[tokio::test]
async fn failed_and_banned_logins_are_counted() {
    let broker = start_broker_with(|c| {
        c.http = Some(HttpConfig::new("127.0.0.1:0".parse().unwrap()));
        c.limits.max_auth_failures_per_user = 2;
    });
    let http = broker.http_addr.unwrap();
    mqttd::db::users::add_user(&broker.db_path.to_string_lossy(), "ann", "pw").unwrap();
    let text = scrape(http).await;
    assert_eq!(sample(&text, "mqttd_auth_failures_total"), 0);
    assert_eq!(sample(&text, "mqttd_logins_banned_total"), 0);
    let addr = broker.addr;
    let login = |password: &'static str| async move {
        let mut client = Client::open(addr, V5).await;
        client
            .send(connect_with_credentials(V5, "intruder", "ann", password))
            .await;
        match client.recv().await {
            Some(Ok(Packet::ConnAck(ack))) => ack.reason,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    };
    for _ in 0..2 {
        assert_eq!(login("wrong").await, ReasonCode::BadUserNameOrPassword);
    }
    // The second failure banned the username: even the right password is refused now.
    assert_eq!(login("pw").await, ReasonCode::Banned);
    let text = scrape(http).await;
    assert_eq!(sample(&text, "mqttd_auth_failures_total"), 2);
    assert_eq!(sample(&text, "mqttd_logins_banned_total"), 1);
    assert_eq!(sample(&text, "mqttd_connects_received_total"), 3);
}

#[tokio::test]
async fn the_admin_api_lists_retained_messages_by_topic() {
    let (broker, http) = start_with_http();
    let (status, empty) = get_json(http, "/api/v1/retained").await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!(
        empty,
        serde_json::json!({"data": [], "meta": {"offset": 0, "limit": 100, "count": 0}})
    );
    let mut client = Client::connected(broker.addr, V5, "keeper").await;
    let properties = Properties::from(PropertyValues {
        message_expiry_interval: Some(3600),
        ..Default::default()
    });
    for (id, topic, qos, payload, properties) in [
        (1, "b/2", QoS::AtLeastOnce, "two", properties),
        (2, "a", QoS::AtLeastOnce, "1", Properties::default()),
        (3, "b/1", QoS::AtLeastOnce, "three", Properties::default()),
        (4, "c", QoS::AtLeastOnce, "", Properties::default()),
    ] {
        client
            .send(Packet::Publish(Box::new(Publish {
                dup: false,
                qos,
                retain: true,
                topic: topic.into(),
                packet_id: Some(id),
                properties,
                payload: Bytes::from(payload),
            })))
            .await;
        client
            .expect(Packet::PubAck(Ack {
                packet_id: id,
                reason: ReasonCode::Success,
                properties: Properties::default(),
            }))
            .await;
    }
    let topics = |listing: &Value| -> Vec<String> {
        listing["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|m| m["topic"].as_str().unwrap().to_owned())
            .collect()
    };
    // An empty payload deletes the retained message of "c" (§3.3.1.3).
    let (_, all) = get_json(http, "/api/v1/retained").await;
    assert_eq!(topics(&all), ["a", "b/1", "b/2"]);
    assert_eq!(all["meta"]["count"], 3);
    let (_, page) = get_json(http, "/api/v1/retained?offset=1&limit=1").await;
    assert_eq!(topics(&page), ["b/1"]);
    assert_eq!(
        page["meta"],
        serde_json::json!({"offset": 1, "limit": 1, "count": 3})
    );
    let (_, last) = get_json(http, "/api/v1/retained?offset=2").await;
    let message = &last["data"][0];
    assert_eq!(message["topic"], "b/2");
    assert_eq!(message["payload_bytes"], 3);
    assert_eq!(message["qos"], 1);
    assert_eq!(message["publisher"], "keeper");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let expires = message["expires_at_ms"].as_i64().expect("an expiry");
    assert!(
        (now + 3_500_000..=now + 3_600_000).contains(&expires),
        "{expires}"
    );
    assert_eq!(all["data"][0]["expires_at_ms"], Value::Null);
    assert!(message.get("payload").is_none(), "never the payload");
    assert_eq!(get_json(http, "/api/v1/retained?limit=0").await.0, 400);
    drop(client);
}

#[tokio::test]
async fn healthz_answers_ok_and_other_paths_404() {
    let (_broker, http) = start_with_http();
    let (status, headers, body) = get(http, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(headers.contains("content-type: text/plain"), "{headers}");
    assert_eq!(get(http, "/nothing").await.0, 404);
    assert_eq!(get(http, "/metrics/x").await.0, 404);
    assert_eq!(request(http, "POST", "/metrics").await.0, 405);
}

#[tokio::test]
async fn without_an_http_table_there_is_no_server() {
    let broker = start_broker();
    assert_eq!(broker.http_addr, None);
}

#[test]
fn an_http_address_in_use_is_a_start_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = mqttd::Config {
        listeners: vec![mqttd::config::ListenerConfig::tcp(
            "127.0.0.1:0".parse().unwrap(),
        )],
        db_path: dir.path().join("broker.db"),
        workers: 1,
        sys_interval: 0,
        http: Some(HttpConfig::new(addr)),
        ..mqttd::Config::default()
    };
    let result = actix::System::new().block_on(mqttd::start(config));
    match result {
        Err(mqttd::BrokerError::Bind { addr: failed, .. }) => assert_eq!(failed, addr),
        Err(e) => panic!("expected a bind error, got {e}"),
        Ok(_) => panic!("started on an address in use"),
    }
}

#[test]
fn check_config_accepts_an_http_table_and_names_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mqttd.toml");
    let check = |text: &str| {
        std::fs::write(&path, text).unwrap();
        Command::new(env!("CARGO_BIN_EXE_mqttd"))
            .arg("--check-config")
            .arg(&path)
            .output()
            .expect("run mqttd")
    };
    let ok = check("[http]\nbind = \"127.0.0.1:9883\"\n");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    for (text, named) in [
        ("[http]\nbind = \"127.0.0.1:1883\"\n", "http.bind"),
        ("[http]\nbind = \"127.0.0.1:9883\"\nport = 1\n", "port"),
        ("[http]\n", "bind"),
    ] {
        let out = check(text);
        assert!(!out.status.success(), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(named), "{named} not in {stderr}");
    }
}

/// A JSON answer: (status, body).
async fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, headers, body) = get(addr, path).await;
    assert!(
        headers.contains("content-type: application/json"),
        "{headers}"
    );
    (status, serde_json::from_str(&body).expect("JSON"))
}

/// The client ids of a listing, in order.
fn ids(listing: &Value) -> Vec<&str> {
    listing["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect()
}

/// A v5 client of user "ann" with a persistent session (Session Expiry 600 s, Clean Start
/// `clean`) and a keep-alive of 30 s; the CONNACK's Session Present.
async fn persistent_client(addr: SocketAddr, client_id: &str, clean: bool) -> (Client, bool) {
    let mut client = Client::open(addr, V5).await;
    let Packet::Connect(mut connect) = connect_with_credentials(V5, client_id, "ann", "pw") else {
        unreachable!()
    };
    connect.clean_start = clean;
    connect.keep_alive = 30;
    connect.properties.session_expiry_interval = Some(600);
    client.send(Packet::Connect(connect)).await;
    match client.recv().await {
        Some(Ok(Packet::ConnAck(ack))) if ack.reason == ReasonCode::Success => {
            (client, ack.session_present)
        }
        other => panic!("expected a successful CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn the_admin_api_lists_shows_and_kicks_clients() {
    let (broker, http) = start_with_http();
    mqttd::db::users::add_user(&broker.db_path.to_string_lossy(), "ann", "pw").unwrap();
    let (mut alpha, _) = persistent_client(broker.addr, "alpha", true).await;
    alpha
        .send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(
                "news".into(),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            )],
        }))
        .await;
    alpha
        .expect(Packet::SubAck(SubAck {
            packet_id: 1,
            properties: Properties::default(),
            reasons: vec![ReasonCode::GrantedQoS1],
        }))
        .await;
    let local = alpha.framed.get_ref().local_addr().unwrap();
    let mut beta = Client::connected(broker.addr, ProtocolVersion::V311, "beta").await;

    let (status, listing) = get_json(http, "/api/v1/clients").await;
    assert_eq!(status, 200, "{listing}");
    assert_eq!(ids(&listing), ["alpha", "beta"]);
    assert_eq!(
        listing["meta"],
        serde_json::json!({"offset": 0, "limit": 100, "count": 2})
    );
    let (status, client) = get_json(http, "/api/v1/clients/alpha").await;
    assert_eq!(status, 200);
    assert_eq!(client, listing["data"][0]);
    assert_eq!(client["username"], "ann");
    assert_eq!(client["address"], local.to_string());
    assert_eq!(client["protocol_version"], 5);
    assert_eq!(client["keep_alive"], 30);
    assert_eq!(client["persistent"], true);
    assert_eq!(client["session_expiry_interval"], 600);
    assert_eq!(client["inflight"], 0);
    let connected_at = client["connected_at_ms"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (now - 60_000..=now).contains(&connected_at),
        "{connected_at}"
    );
    let beta_json = &listing["data"][1];
    assert_eq!(beta_json["protocol_version"], 4);
    assert_eq!(beta_json["username"], Value::Null);
    assert_eq!(beta_json["persistent"], false);

    let (status, sessions) = get_json(http, "/api/v1/sessions").await;
    assert_eq!(status, 200);
    assert_eq!(ids(&sessions), ["alpha"], "only persistent sessions");
    assert_eq!(sessions["data"][0]["connected"], true);
    assert_eq!(sessions["data"][0]["expires_at_ms"], Value::Null);

    // Unknown clients.
    let (status, body) = get_json(http, "/api/v1/clients/nobody").await;
    assert_eq!(
        (status, &body["error"]),
        (404, &Value::from("client not connected"))
    );
    assert_eq!(
        request(http, "DELETE", "/api/v1/clients/nobody").await.0,
        404
    );

    // Kick: DISCONNECT 0x98, then the connection closes; the persistent session stays.
    let (status, _, body) = request(http, "DELETE", "/api/v1/clients/alpha").await;
    assert_eq!((status, body.as_str()), (204, ""));
    alpha
        .expect(Packet::Disconnect(Disconnect {
            reason: ReasonCode::AdministrativeAction,
            ..Default::default()
        }))
        .await;
    alpha.expect_closed().await;
    let reason = crate::abuse::wait_for_disconnect_reason(&broker, "alpha").await;
    assert_eq!(reason, "kicked by an administrator (0x98)");
    let sessions = loop {
        let (_, sessions) = get_json(http, "/api/v1/sessions").await;
        if sessions["data"][0]["connected"] == false {
            break sessions;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let session = &sessions["data"][0];
    assert_eq!(session["client_id"], "alpha");
    assert_eq!(session["expiry_interval"], 600);
    let expires = session["expires_at_ms"]
        .as_i64()
        .expect("a deadline once offline");
    assert!(expires >= now + 590_000, "{expires}");
    assert_eq!(session["queued_messages"], 0);
    assert_eq!(session["subscriptions"], 1);
    assert_eq!(ids(&get_json(http, "/api/v1/clients").await.1), ["beta"]);
    // A message for the offline session is queued for it.
    beta.send(Packet::Publish(Box::new(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "news".into(),
        packet_id: Some(7),
        properties: Properties::default(),
        payload: Bytes::from_static(b"extra"),
    })))
    .await;
    beta.expect(Packet::PubAck(Ack {
        packet_id: 7,
        reason: ReasonCode::Success,
        properties: Properties::default(),
    }))
    .await;
    let (_, sessions) = get_json(http, "/api/v1/sessions").await;
    assert_eq!(sessions["data"][0]["queued_messages"], 1);
    assert_eq!(sessions["data"][0]["queued_bytes"], 5);
    assert_eq!(sessions["data"][0]["inflight"], 0);
    assert_eq!(
        request(http, "DELETE", "/api/v1/clients/alpha").await.0,
        404
    );

    // 3.1.1 has no server DISCONNECT: the connection just closes.
    assert_eq!(request(http, "DELETE", "/api/v1/clients/beta").await.0, 204);
    beta.expect_closed().await;
    // The kicked persistent session resumes.
    let (_again, session_present) = persistent_client(broker.addr, "alpha", false).await;
    assert!(session_present);
}

#[tokio::test]
async fn admin_listings_are_bounded_pages_in_client_id_order() {
    let (broker, http) = start_with_http();
    let mut clients = Vec::new();
    for id in ["c3", "c0", "c4", "c1", "c2"] {
        clients.push(Client::connected(broker.addr, V5, id).await);
    }
    // Any identifier can be asked for, percent-encoded, `/` included.
    let odd = Client::connected(broker.addr, V5, "room/1 a").await;
    let (status, client) = get_json(http, "/api/v1/clients/room/1%20a").await;
    assert_eq!(
        (status, &client["client_id"]),
        (200, &Value::from("room/1 a"))
    );
    let (status, client) = get_json(http, "/api/v1/clients/room%2F1%20a").await;
    assert_eq!(
        (status, &client["client_id"]),
        (200, &Value::from("room/1 a"))
    );
    assert_eq!(
        request(http, "DELETE", "/api/v1/clients/room%2F1%20a")
            .await
            .0,
        204
    );
    drop(odd);
    let page = |query: &'static str| get_json(http, query);
    let (status, all) = page("/api/v1/clients").await;
    assert_eq!(status, 200);
    assert_eq!(ids(&all), ["c0", "c1", "c2", "c3", "c4"]);
    let (_, first) = page("/api/v1/clients?limit=2").await;
    assert_eq!(ids(&first), ["c0", "c1"]);
    assert_eq!(
        first["meta"],
        serde_json::json!({"offset": 0, "limit": 2, "count": 5})
    );
    assert_eq!(
        ids(&page("/api/v1/clients?offset=2&limit=2").await.1),
        ["c2", "c3"]
    );
    assert_eq!(
        ids(&page("/api/v1/clients?offset=4&limit=2").await.1),
        ["c4"]
    );
    assert!(ids(&page("/api/v1/clients?offset=5").await.1).is_empty());
    assert_eq!(page("/api/v1/clients?limit=10000").await.0, 200);
    for bad in [
        "/api/v1/clients?limit=0",
        "/api/v1/clients?limit=10001",
        "/api/v1/clients?offset=-1",
        "/api/v1/sessions?limit=x",
    ] {
        let (status, body) = page(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let (status, sessions) = page("/api/v1/sessions").await;
    assert_eq!(status, 200);
    assert_eq!(sessions["meta"]["count"], 0);
    assert_eq!(request(http, "POST", "/api/v1/clients").await.0, 405);
    drop(clients);
}

#[tokio::test]
async fn an_admin_token_guards_the_api_but_not_metrics_health_or_status() {
    let broker = start_broker_with(|c| {
        let mut http = HttpConfig::new("127.0.0.1:0".parse().unwrap());
        http.admin_token = Some("s3cret".into());
        c.http = Some(http);
    });
    let http = broker.http_addr.unwrap();
    let _client = Client::connected(broker.addr, V5, "guarded").await;
    for (method, path) in [
        ("GET", "/api/v1/clients"),
        ("GET", "/api/v1/sessions"),
        ("GET", "/api/v1/retained"),
        ("GET", "/api/v1/clients/guarded"),
        ("DELETE", "/api/v1/clients/guarded"),
    ] {
        let (status, headers, _) = request(http, method, path).await;
        assert_eq!(status, 401, "{method} {path}");
        assert!(headers.contains("www-authenticate: bearer"), "{headers}");
        let wrong = request_with(http, method, path, "Authorization: Bearer s3cre\r\n").await;
        assert_eq!(wrong.0, 401, "{method} {path}");
    }
    let (status, _, body) = request_with(
        http,
        "GET",
        "/api/v1/clients",
        "Authorization: Bearer s3cret\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("\"guarded\""), "{body}");
    for path in ["/metrics", "/healthz", "/", "/status.js", "/api/v1/stats"] {
        assert_eq!(get(http, path).await.0, 200, "{path}");
    }
}

#[tokio::test]
async fn without_a_token_the_api_is_refused_off_loopback() {
    let broker = start_broker_with(|c| {
        c.http = Some(HttpConfig::new("0.0.0.0:0".parse().unwrap()));
    });
    let port = broker.http_addr.unwrap().port();
    let http: SocketAddr = ([127, 0, 0, 1], port).into();
    let (status, _, body) = get(http, "/api/v1/clients").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("admin_token"), "{body}");
    assert_eq!(get(http, "/metrics").await.0, 200);
}

#[tokio::test]
async fn the_status_page_shows_the_broker_at_a_glance() {
    let (broker, http) = start_with_http();
    let _client = Client::connected(broker.addr, V5, "glance").await;
    let (status, headers, body) = get(http, "/").await;
    assert_eq!(status, 200);
    assert!(
        headers.contains("content-type: text/html; charset=utf-8"),
        "{headers}"
    );
    assert!(body.contains(concat!("<h1>mqttd ", env!("CARGO_PKG_VERSION"), "</h1>")));
    for row in [
        "<th>connections</th><td class=\"n\" data-key=\"connections\">1</td>",
        "<th>clients connected</th><td class=\"n\" data-key=\"clients_connected\">1</td>",
        "<th>persistent sessions</th><td class=\"n\" data-key=\"persistent_sessions\">0</td>",
        "<script src=\"/status.js\" defer></script>",
        "<canvas id=\"chart\"",
        "<th>messages received</th>",
        "<th>dropped qos0</th>",
    ] {
        assert!(body.contains(row), "{row:?} not in\n{body}");
    }
    assert_eq!(request(http, "POST", "/").await.0, 405);
    // Its script is mqttd's own, and reads the stats.
    let (status, headers, script) = get(http, "/status.js").await;
    assert_eq!(status, 200);
    assert!(
        headers.contains("content-type: text/javascript"),
        "{headers}"
    );
    assert!(script.contains("/api/v1/stats"));
    assert!(!script.contains("http://") && !script.contains("https://"));
}

#[tokio::test]
async fn the_stats_api_reports_counters_and_gauges_without_a_token() {
    // A token is set, as it would be on a network address: the stats need none.
    let broker = start_broker_with(|c| {
        let mut http = HttpConfig::new("127.0.0.1:0".parse().unwrap());
        http.admin_token = Some("s3cret".into());
        c.http = Some(http);
    });
    let http = broker.http_addr.unwrap();
    let (status, before) = get_json(http, "/api/v1/stats").await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(before["version"], env!("CARGO_PKG_VERSION"));
    for key in [
        "uptime_seconds",
        "connections",
        "clients_connected",
        "subscriptions",
        "retained_messages",
        "persistent_sessions",
        "queued_messages",
        "dropped_qos0",
        "auth_failures",
    ] {
        assert!(before[key].is_u64(), "{key} in {before}");
    }
    for key in [
        "messages_received",
        "messages_sent",
        "bytes_received",
        "bytes_sent",
    ] {
        for field in ["total", "qos0", "qos1", "qos2"] {
            assert!(before[key][field].is_u64(), "{key}.{field} in {before}");
        }
    }
    for key in ["commit_duration_seconds", "commit_batch_ops"] {
        assert!(before[key]["count"].is_u64(), "{key} in {before}");
        assert!(before[key]["sum"].is_number(), "{key} in {before}");
    }
    assert_eq!(before["clients_connected"], 0);
    assert_eq!(before["messages_received"]["total"], 0);

    let mut client = Client::connected(broker.addr, V5, "stats").await;
    client
        .send(Packet::Publish(Box::new(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "stats/t".into(),
            packet_id: Some(1),
            properties: Properties::default(),
            payload: Bytes::from_static(b"hello"),
        })))
        .await;
    match client.recv().await {
        Some(Ok(Packet::PubAck(ack))) if ack.packet_id == 1 => {}
        other => panic!("expected PUBACK 1, got {other:?}"),
    }
    let (_, after) = get_json(http, "/api/v1/stats").await;
    assert_eq!(after["clients_connected"], 1, "{after}");
    assert_eq!(after["connections"], 1, "{after}");
    assert_eq!(after["messages_received"]["total"], 1, "{after}");
    assert_eq!(after["messages_received"]["qos1"], 1, "{after}");
    assert_eq!(after["bytes_received"]["qos1"], 5, "{after}");
    // Nothing more than /metrics: counts, no client ids or topics.
    let text = serde_json::to_string(&after).unwrap();
    assert!(
        !text.contains("stats/t") && !text.contains("\"stats\""),
        "{text}"
    );
    let metrics = scrape(http).await;
    assert_eq!(sample(&metrics, "mqttd_bytes_received_total{qos=\"1\"}"), 5);
    assert_eq!(request(http, "POST", "/api/v1/stats").await.0, 405);
}
