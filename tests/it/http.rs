//! The `[http]` operations endpoint: `/metrics` (Prometheus text format 0.0.4) and `/healthz`,
//! over real TCP with a plain HTTP/1.1 client.

use std::net::SocketAddr;
use std::process::Command;

use bytes::Bytes;
use mqttd::config::HttpConfig;
use mqttd::mqtt::{
    Ack, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode, SubAck, Subscribe,
    SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// A broker with the HTTP server on an ephemeral port.
fn start_with_http() -> (TestBroker, SocketAddr) {
    let broker = start_broker_with(|c| {
        c.http = Some(HttpConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
        })
    });
    let http = broker
        .http_addr
        .expect("the broker reports its HTTP address");
    (broker, http)
}

/// One HTTP/1.1 request on a fresh connection: (status, headers, body).
async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
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
    assert_eq!(sample(&text, "mqttd_messages_received_total"), 0);
    assert_eq!(sample(&text, "mqttd_clients_connected"), 0);
    assert_eq!(sample(&text, "mqttd_connections"), 0);

    // A persistent session with one subscription, which publishes a QoS 1 message (PUBACK:
    // the broker has counted and routed it).
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
            filters: vec![("metered/#".into(), SubscriptionOptions::default())],
        }))
        .await;
    client
        .expect(Packet::SubAck(SubAck {
            packet_id: 1,
            properties: Properties::default(),
            reasons: vec![ReasonCode::Success],
        }))
        .await;
    client
        .send(Packet::Publish(Box::new(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "elsewhere".into(),
            packet_id: Some(2),
            properties: Properties::default(),
            payload: Bytes::from_static(b"hello"),
        })))
        .await;
    client
        .expect(Packet::PubAck(Ack {
            packet_id: 2,
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }))
        .await;

    let text = scrape(http).await;
    assert_eq!(sample(&text, "mqttd_messages_received_total"), 1);
    assert_eq!(sample(&text, "mqttd_connections"), 1);
    assert_eq!(sample(&text, "mqttd_clients_connected"), 1);
    assert_eq!(sample(&text, "mqttd_subscriptions"), 1);
    assert_eq!(sample(&text, "mqttd_retained_messages"), 1);
    assert_eq!(sample(&text, "mqttd_persistent_sessions"), 1);
    drop(client);
}

#[tokio::test]
async fn healthz_answers_ok_and_other_paths_404() {
    let (_broker, http) = start_with_http();
    let (status, headers, body) = get(http, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(headers.contains("content-type: text/plain"), "{headers}");
    assert_eq!(get(http, "/").await.0, 404);
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
        http: Some(HttpConfig { bind: addr }),
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
