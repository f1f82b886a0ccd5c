//! MQTT over WebSocket listeners (ws and wss): a tokio-tungstenite client speaking MQTT
//! through mqttd's own codec, with explicit control over the frames (packets split over
//! frames, several packets in one frame, text frames, oversized frames), the handshake's
//! refusals and bounds, and paho-mqtt over websockets.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use mqttd::Config;
use mqttd::config::{CertIdentity, ListenerConfig, TlsConfig};
use mqttd::mqtt::{
    Disconnect, MqttCodec, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode, SubAck,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::codec::{Decoder, Encoder};

use crate::common::*;
use crate::tls::{Pki, client_config};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

fn ws_listener(path: Option<&str>, tls: Option<TlsConfig>) -> ListenerConfig {
    ListenerConfig {
        tls,
        websocket: true,
        websocket_path: path.map(str::to_owned),
        ..ListenerConfig::tcp("127.0.0.1:0".parse().unwrap())
    }
}

/// A broker with one WebSocket listener (`broker.addr`) and then a TCP one (`broker.addrs[1]`).
fn ws_broker(adjust: impl FnOnce(&mut Config)) -> TestBroker {
    start_broker_with(|c| {
        c.listeners = vec![
            ws_listener(None, None),
            ListenerConfig::tcp("127.0.0.1:0".parse().unwrap()),
        ];
        adjust(c);
    })
}

/// An upgrade request for `path` offering `protocols` (none: no Sec-WebSocket-Protocol).
fn request(addr: SocketAddr, path: &str, protocols: &str) -> Request {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    if !protocols.is_empty() {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
    }
    request
}

/// The WebSocket handshake over `stream`; the HTTP refusal, if any, as the error.
async fn upgrade<S>(stream: S, request: Request) -> Result<WebSocketStream<S>, tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (ws, response) =
        tokio::time::timeout(TIMEOUT, tokio_tungstenite::client_async(request, stream))
            .await
            .expect("upgrade timed out")?;
    // tungstenite checked that the server chose one of the offered subprotocols.
    assert!(response.headers().contains_key("sec-websocket-protocol"));
    Ok(ws)
}

/// An MQTT client over a WebSocket: packets go out through mqttd's codec, one binary message
/// each unless a test sends frames itself; incoming binary messages are one byte stream.
struct WsClient<S> {
    ws: WebSocketStream<S>,
    codec: MqttCodec,
    received: BytesMut,
}

impl WsClient<TcpStream> {
    /// A ws:// connection offering "mqtt" on `/mqtt`.
    async fn open(addr: SocketAddr, version: ProtocolVersion) -> WsClient<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let ws = upgrade(tcp, request(addr, "/mqtt", "mqtt")).await.unwrap();
        WsClient::new(ws, version)
    }

    /// As `open`, then CONNECT/CONNACK with a clean session.
    async fn connected(
        addr: SocketAddr,
        version: ProtocolVersion,
        client_id: &str,
    ) -> WsClient<TcpStream> {
        let mut client = WsClient::open(addr, version).await;
        client.connect(version, client_id).await;
        client
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsClient<S> {
    fn new(ws: WebSocketStream<S>, version: ProtocolVersion) -> WsClient<S> {
        WsClient {
            ws,
            codec: MqttCodec::new(version, 268_435_460),
            received: BytesMut::new(),
        }
    }

    async fn connect(&mut self, version: ProtocolVersion, client_id: &str) {
        self.send(connect(version, client_id)).await;
        match self.recv().await {
            Some(Packet::ConnAck(ack)) if ack.reason == ReasonCode::Success => {}
            other => panic!("expected a successful CONNACK, got {other:?}"),
        }
    }

    fn encode(&mut self, packet: Packet) -> BytesMut {
        let mut bytes = BytesMut::new();
        self.codec.encode(packet, &mut bytes).unwrap();
        bytes
    }

    /// One packet in one binary message.
    async fn send(&mut self, packet: Packet) {
        let bytes = self.encode(packet).freeze();
        self.send_message(Message::Binary(bytes)).await;
    }

    async fn send_message(&mut self, message: Message) {
        self.ws.send(message).await.unwrap();
    }

    /// The next packet, or `None` once the broker has closed the WebSocket (Close frame or
    /// end of the connection). Panics after TIMEOUT.
    async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(packet) = self.codec.decode(&mut self.received).unwrap() {
                return Some(packet);
            }
            let next = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("timed out waiting for a packet");
            match next {
                Some(Ok(Message::Binary(bytes))) => self.received.extend_from_slice(&bytes),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                Some(Ok(other)) => panic!("the broker sent a non-binary message: {other:?}"),
            }
        }
    }

    async fn expect(&mut self, packet: Packet) {
        assert_eq!(self.recv().await, Some(packet));
    }

    async fn expect_closed(&mut self) {
        if let Some(packet) = self.recv().await {
            panic!("expected the connection to close, got {packet:?}");
        }
    }

    /// A broken WebSocket stream is a read error for the session: as for any read error, a
    /// v5 client past CONNACK gets DISCONNECT 0x80 before the Close frame.
    async fn expect_read_error_disconnect(&mut self) {
        self.expect(Packet::Disconnect(Disconnect {
            reason: ReasonCode::UnspecifiedError,
            ..Default::default()
        }))
        .await;
        self.expect_closed().await;
    }
}

fn publish(topic: &str, qos: QoS, packet_id: Option<u16>, payload: &[u8]) -> Packet {
    Packet::Publish(Box::new(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload),
    }))
}

fn suback(packet_id: u16) -> Packet {
    Packet::SubAck(SubAck {
        packet_id,
        properties: Properties::default(),
        reasons: vec![ReasonCode::GrantedQoS1],
    })
}

fn payload_of(packet: Option<Packet>) -> (String, Bytes) {
    match packet {
        Some(Packet::Publish(p)) => (p.topic.to_string(), p.payload),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

#[tokio::test]
async fn ws_and_tcp_clients_exchange_messages_both_ways() {
    let broker = ws_broker(|_| {});
    let mut ws = WsClient::connected(broker.addr, V5, "ws-client").await;
    let mut tcp = Client::connected(broker.addrs[1], V311, "tcp-client").await;
    ws.send(subscribe_packet(1, "to/ws")).await;
    ws.expect(suback(1)).await;
    tcp.send(subscribe_packet(1, "to/tcp")).await;
    tcp.expect(suback(1)).await;

    ws.send(publish("to/tcp", QoS::AtLeastOnce, Some(7), b"from ws"))
        .await;
    ws.expect(puback_packet(7)).await;
    match tcp.recv().await {
        Some(Ok(Packet::Publish(p))) => {
            assert_eq!((&*p.topic, &p.payload[..]), ("to/tcp", &b"from ws"[..]));
            tcp.send(puback_packet(p.packet_id.unwrap())).await;
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }

    tcp.send(publish("to/ws", QoS::AtLeastOnce, Some(8), b"from tcp"))
        .await;
    tcp.expect(puback_packet(8)).await;
    let Some(Packet::Publish(p)) = ws.recv().await else {
        panic!("expected PUBLISH")
    };
    assert_eq!((&*p.topic, &p.payload[..]), ("to/ws", &b"from tcp"[..]));
    ws.send(puback_packet(p.packet_id.unwrap())).await;

    ws.send(Packet::PingReq).await;
    ws.expect(Packet::PingResp).await;
}

#[tokio::test]
async fn mqtt_3_1_clients_offering_mqttv3_1_are_answered_with_it() {
    let broker = ws_broker(|_| {});
    let tcp = TcpStream::connect(broker.addr).await.unwrap();
    let (ws, response) =
        tokio_tungstenite::client_async(request(broker.addr, "/mqtt", "mqttv3.1"), tcp)
            .await
            .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "mqttv3.1");
    let mut client = WsClient::new(ws, ProtocolVersion::V31);
    client.connect(ProtocolVersion::V31, "old-client").await;

    // Offered both, "mqtt" is chosen [MQTT-6.0.0-4].
    let tcp = TcpStream::connect(broker.addr).await.unwrap();
    let (_, response) =
        tokio_tungstenite::client_async(request(broker.addr, "/mqtt", "mqttv3.1, mqtt"), tcp)
            .await
            .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "mqtt");
}

/// [MQTT-6.0.0-2], bad-inputs H119: packets are not aligned on frames, either way.
#[tokio::test]
async fn h119_packets_split_over_frames_and_several_in_one_frame_are_parsed() {
    let broker = ws_broker(|_| {});
    let mut ws = WsClient::open(broker.addr, V5).await;

    // CONNECT in three binary messages of a few bytes each: the broker waits for the rest.
    let connect = ws.encode(connect(V5, "split")).freeze();
    let (a, rest) = connect.split_at(3);
    let (b, c) = rest.split_at(5);
    for part in [a, b, c] {
        ws.send_message(Message::Binary(Bytes::copy_from_slice(part)))
            .await;
    }
    match ws.recv().await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason, ReasonCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }

    // One message fragmented into three frames (binary, continuation, final continuation),
    // with a PUBLISH cut across the fragments.
    let payload = vec![b'x'; 300];
    let mut bytes = ws.encode(subscribe_packet(1, "t"));
    bytes.extend_from_slice(&ws.encode(publish("t", QoS::AtLeastOnce, Some(2), &payload)));
    let bytes = bytes.freeze();
    let cut = [bytes.len() / 3, 2 * bytes.len() / 3];
    let fragments = [
        (&bytes[..cut[0]], OpCode::Data(Data::Binary), false),
        (&bytes[cut[0]..cut[1]], OpCode::Data(Data::Continue), false),
        (&bytes[cut[1]..], OpCode::Data(Data::Continue), true),
    ];
    for (part, opcode, last) in fragments {
        let frame = Frame::message(Bytes::copy_from_slice(part), opcode, last);
        ws.send_message(Message::Frame(frame)).await;
    }
    ws.expect(suback(1)).await;
    // The broker's own delivery and the PUBACK may come in either order.
    let mut got = vec![ws.recv().await, ws.recv().await];
    got.sort_by_key(|p| matches!(p, Some(Packet::Publish(_))));
    assert_eq!(got[0], Some(puback_packet(2)));
    let (topic, received) = payload_of(got.pop().unwrap());
    assert_eq!((topic.as_str(), &received[..]), ("t", &payload[..]));

    // Three packets in one single-frame message.
    let mut bytes = ws.encode(Packet::PingReq);
    bytes.extend_from_slice(&ws.encode(publish("u", QoS::AtLeastOnce, Some(3), b"1")));
    bytes.extend_from_slice(&ws.encode(Packet::PingReq));
    ws.send_message(Message::Binary(bytes.freeze())).await;
    // The PUBACK waits for routing, so it may come after the second PINGRESP.
    let got = [ws.recv().await, ws.recv().await, ws.recv().await];
    assert_eq!(
        got.iter().filter(|p| **p == Some(Packet::PingResp)).count(),
        2
    );
    assert!(got.contains(&Some(puback_packet(3))), "{got:?}");
}

/// [MQTT-6.0.0-1]: only binary data frames carry MQTT.
#[tokio::test]
async fn a_text_frame_closes_the_connection() {
    let broker = ws_broker(|_| {});
    let mut ws = WsClient::connected(broker.addr, V5, "texter").await;
    ws.send_message(Message::text("PINGREQ")).await;
    ws.expect_read_error_disconnect().await;
    assert_canary(broker.addrs[1]).await;
}

#[tokio::test]
async fn ping_frames_are_answered_and_do_not_disturb_the_stream() {
    let broker = ws_broker(|_| {});
    let mut ws = WsClient::connected(broker.addr, V5, "pinger").await;
    ws.send_message(Message::Ping(Bytes::from_static(b"hb")))
        .await;
    // The pong comes first; `recv` skips it, and the MQTT exchange is unaffected.
    let pong = tokio::time::timeout(TIMEOUT, ws.ws.next()).await.unwrap();
    assert!(
        matches!(&pong, Some(Ok(Message::Pong(p))) if &p[..] == b"hb"),
        "{pong:?}"
    );
    ws.send(Packet::PingReq).await;
    ws.expect(Packet::PingResp).await;
}

/// A frame or a message over `max_packet_size` (plus a little) ends the connection before
/// it is buffered, even when only its header has arrived.
#[tokio::test]
async fn oversized_frames_and_messages_close_the_connection() {
    let broker = ws_broker(|c| c.limits.max_packet_size = 1024);

    // One frame of 64 KiB.
    let mut ws = WsClient::connected(broker.addr, V5, "big-frame").await;
    ws.send_message(Message::Binary(Bytes::from(vec![0u8; 64 * 1024])))
        .await;
    ws.expect_read_error_disconnect().await;

    // A message of small frames adding up to 64 KiB.
    let mut ws = WsClient::connected(broker.addr, V5, "big-message").await;
    for i in 0..64 {
        let opcode = if i == 0 {
            OpCode::Data(Data::Binary)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(Bytes::from(vec![0u8; 1024]), opcode, false);
        if ws.ws.send(Message::Frame(frame)).await.is_err() {
            break;
        }
    }
    ws.expect_read_error_disconnect().await;

    // A frame header declaring 2^62 bytes, written raw: closed at once, nothing allocated.
    let mut ws = WsClient::connected(broker.addr, V5, "huge-header").await;
    let mut header = BytesMut::new();
    header.put_u8(0x82); // FIN, binary
    header.put_u8(0x80 | 127); // masked, 64-bit length
    header.put_u64(1 << 62);
    header.put_slice(&[1, 2, 3, 4]); // mask key
    ws.ws.get_mut().write_all(&header).await.unwrap();
    let started = Instant::now();
    ws.expect_read_error_disconnect().await;
    assert!(started.elapsed() < Duration::from_secs(5));

    assert_canary(broker.addrs[1]).await;
}

/// Raw HTTP: the status line of the broker's answer to `request`, then everything up to close.
async fn raw_http(addr: SocketAddr, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut answer))
        .await
        .expect("the broker must answer and close")
        .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

fn upgrade_request(path: &str, extra_headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         {extra_headers}\r\n"
    )
}

#[tokio::test]
async fn only_the_configured_path_with_an_mqtt_subprotocol_is_upgraded() {
    let broker = start_broker_with(|c| c.listeners = vec![ws_listener(Some("/broker"), None)]);

    let answer = raw_http(
        broker.addr,
        &upgrade_request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");

    let answer = raw_http(broker.addr, &upgrade_request("/broker", "")).await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer.ends_with("no MQTT WebSocket subprotocol offered\n"),
        "{answer}"
    );

    let answer = raw_http(
        broker.addr,
        &upgrade_request("/broker", "Sec-WebSocket-Protocol: chat\r\n"),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );

    // Not an upgrade at all: closed without an answer.
    let answer = raw_http(
        broker.addr,
        "GET /broker HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert_eq!(answer, "");

    // MQTT bytes on a WebSocket listener: not HTTP, closed.
    let answer = exchange_raw(broker.addr, &[0xC0, 0x00]).await;
    assert!(answer.is_empty(), "{answer:?}");

    let tcp = TcpStream::connect(broker.addr).await.unwrap();
    let ws = upgrade(tcp, request(broker.addr, "/broker?client=1", "mqtt"))
        .await
        .unwrap();
    WsClient::new(ws, V5).connect(V5, "on-path").await;
}

#[tokio::test]
async fn an_oversized_request_head_is_refused() {
    let broker = start_broker_with(|c| c.listeners = vec![ws_listener(None, None)]);
    let cookie = format!("Cookie: {}\r\n", "a".repeat(70 * 1024));
    let mut tcp = TcpStream::connect(broker.addr).await.unwrap();
    // The broker may close while this is still being written.
    let _ = tcp
        .write_all(upgrade_request("/mqtt", &cookie).as_bytes())
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut answer))
        .await
        .expect("the broker must close");
    assert!(read.is_err() || answer.is_empty(), "{answer:?}");
}

/// The upgrade is bounded by `connect_timeout` like a TLS handshake, and holds a slot
/// (`max_connections`) until then, like any connection.
#[tokio::test]
async fn a_stalled_upgrade_is_closed_after_connect_timeout_and_frees_its_slot() {
    let broker = start_broker_with(|c| {
        c.listeners = vec![ws_listener(None, None)];
        c.limits.connect_timeout = 1;
        c.limits.max_connections = 1;
    });
    let started = Instant::now();
    let mut stalled = TcpStream::connect(broker.addr).await.unwrap();
    // Half a request head, then nothing.
    stalled
        .write_all(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();

    // Meanwhile the only slot is taken: a second connection is closed at once.
    let answer = raw_http(
        broker.addr,
        &upgrade_request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n"),
    )
    .await;
    assert_eq!(answer, "");

    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf))
        .await
        .expect("a stalled upgrade must be closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // The slot is free again (released just after the socket is closed, hence the retry).
    let mut attempts = 0;
    loop {
        let tcp = TcpStream::connect(broker.addr).await.unwrap();
        match upgrade(tcp, request(broker.addr, "/mqtt", "mqtt")).await {
            Ok(ws) => {
                WsClient::new(ws, V5).connect(V5, "after").await;
                break;
            }
            Err(e) => {
                attempts += 1;
                assert!(attempts < 20, "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn per_address_limits_apply_to_websocket_connections() {
    let broker = ws_broker(|c| c.limits.max_connections_per_ip = 1);
    let mut first = WsClient::connected(broker.addr, V5, "first").await;
    // A second connection from 127.0.0.1, on either listener, is closed before a byte is read.
    let tcp = TcpStream::connect(broker.addr).await.unwrap();
    assert!(
        upgrade(tcp, request(broker.addr, "/mqtt", "mqtt"))
            .await
            .is_err()
    );
    let answer = exchange_raw(broker.addrs[1], &[0xC0, 0x00]).await;
    assert!(answer.is_empty(), "{answer:?}");
    first.send(Packet::PingReq).await;
    first.expect(Packet::PingResp).await;
}

/// The keep-alive applies as on TCP: 1.5 times the Keep Alive without a packet ends it.
#[tokio::test]
async fn keep_alive_applies_over_websocket() {
    let broker = ws_broker(|_| {});
    let mut ws = WsClient::open(broker.addr, V311).await;
    let Packet::Connect(mut c) = connect(V311, "sleepy") else {
        unreachable!()
    };
    c.keep_alive = 1;
    ws.send(Packet::Connect(c)).await;
    assert!(matches!(ws.recv().await, Some(Packet::ConnAck(_))));
    let started = Instant::now();
    ws.expect_closed().await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

/// A subscriber to `filter` over ws whose socket buffers little and that then reads nothing.
async fn stalled_subscriber(
    addr: SocketAddr,
    client_id: &str,
    filter: &str,
) -> WsClient<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let ws = upgrade(tcp, request(addr, "/mqtt", "mqtt")).await.unwrap();
    let mut client = WsClient::new(ws, V5);
    client.connect(V5, client_id).await;
    client.send(subscribe_packet(1, filter)).await;
    client.expect(suback(1)).await;
    client
}

/// As abuse::e87_g108 over TCP: the WebSocket writer passes the socket's backpressure on, so
/// QoS 0 messages for a subscriber that reads nothing stay in its bounded queue (and are
/// dropped there) instead of piling up in a write buffer.
#[tokio::test]
async fn g108_a_stalled_websocket_subscriber_holds_no_more_than_its_queue_and_the_kernel_buffers() {
    const SENT: usize = 400;
    let broker = ws_broker(|c| c.limits.max_queued_messages = 10);
    let _stuck = stalled_subscriber(broker.addr, "stuck", "flood").await;
    let mut publisher = Client::connected(broker.addrs[1], V5, "pub").await;
    let payload = vec![7u8; 64 * 1024];
    for _ in 0..SENT {
        publisher
            .send(publish("flood", QoS::AtMostOnce, None, &payload))
            .await;
        publisher.send(Packet::PingReq).await;
        publisher.expect(Packet::PingResp).await;
    }
    // Its queue (10), one pump batch (16), the kernel's buffers (4 MiB = 64 messages), the
    // 16 KiB high-water mark and tungstenite's 128 KiB write buffer: well under 150.
    let dropped = mqttd::stats::Counters::get(&broker.counters.dropped_qos0) as usize;
    let accepted = SENT - dropped;
    assert!(
        accepted <= 150,
        "{accepted} messages of 64 KiB accepted for a client that read nothing"
    );
}

/// `send_timeout` ends a WebSocket connection whose client reads nothing, as on TCP.
#[tokio::test]
async fn e87_a_websocket_client_that_reads_nothing_is_closed_after_the_send_timeout() {
    let broker = ws_broker(|c| c.limits.send_timeout = 1);
    let _stuck = stalled_subscriber(broker.addr, "stuck", "flood").await;
    let mut publisher = Client::connected(broker.addrs[1], V5, "pub").await;
    let flood = tokio::spawn(async move {
        let payload = vec![7u8; 64 * 1024];
        loop {
            publisher
                .send(publish("flood", QoS::AtMostOnce, None, &payload))
                .await;
            publisher.send(Packet::PingReq).await;
            publisher.expect(Packet::PingResp).await;
        }
    });
    let start = Instant::now();
    let reason = crate::abuse::wait_for_disconnect_reason(&broker, "stuck").await;
    flood.abort();
    assert!(reason.contains("read nothing"), "{reason}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

/// wss: TLS first (the listener's own acceptor, certificates and all), then the upgrade.
async fn wss_client(
    addr: SocketAddr,
    pki: &Pki,
    identity: Option<&crate::tls::Leaf>,
) -> Result<WsClient<tokio_rustls::client::TlsStream<TcpStream>>, String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = TlsConnector::from(client_config(&pki.ca, identity))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let request = format!("wss://127.0.0.1:{}/mqtt", addr.port());
    let mut request = request.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let ws = upgrade(tls, request)
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    Ok(WsClient::new(ws, V5))
}

#[tokio::test]
async fn wss_clients_connect_and_exchange_messages_with_tcp_clients() {
    let pki = Pki::new();
    let broker = start_broker_with(|c| {
        c.listeners = vec![
            ws_listener(None, Some(pki.server_tls())),
            ListenerConfig::tcp("127.0.0.1:0".parse().unwrap()),
        ]
    });
    let mut wss = wss_client(broker.addr, &pki, None).await.unwrap();
    wss.connect(V5, "wss-client").await;
    wss.send(subscribe_packet(1, "secure/#")).await;
    wss.expect(suback(1)).await;
    let mut tcp = Client::connected(broker.addrs[1], V5, "tcp-client").await;
    tcp.send(publish("secure/a", QoS::AtLeastOnce, Some(1), b"over wss"))
        .await;
    tcp.expect(puback_packet(1)).await;
    let (topic, payload) = payload_of(wss.recv().await);
    assert_eq!(
        (topic.as_str(), &payload[..]),
        ("secure/a", &b"over wss"[..])
    );

    // Plain ws on the wss listener: the TLS handshake fails, nothing is upgraded.
    let tcp = TcpStream::connect(broker.addr).await.unwrap();
    assert!(
        upgrade(tcp, request(broker.addr, "/mqtt", "mqtt"))
            .await
            .is_err()
    );
}

/// bad-inputs 5.3: client certificates apply to wss as to TLS (Mosquitto 1.5.4's bug).
#[tokio::test]
async fn wss_with_client_certificates_refuses_none_and_maps_the_cn_to_the_username() {
    let pki = Pki::new();
    let broker = start_broker_with(|c| {
        c.listeners = vec![ws_listener(None, Some(pki.mtls(Some(CertIdentity::Cn))))];
        c.allow_anonymous = Some(false);
    });
    // TLS 1.3: the refusal of a missing certificate shows on the first read, the upgrade.
    let refused = wss_client(broker.addr, &pki, None).await;
    assert!(refused.is_err());

    let alice = pki.client("alice", 10);
    let mut client = wss_client(broker.addr, &pki, Some(&alice)).await.unwrap();
    // Anonymous is off, yet a CONNECT without username is accepted: the certificate names it.
    client.connect(V5, "cert-ws").await;
    let record = mqttd::db::queries::get_client(&mut broker.db(), "cert-ws")
        .unwrap()
        .unwrap();
    assert_eq!(record.username.as_deref(), Some("alice"));
}

/// A paho-mqtt 2.x client over websockets (MQTT 5) and one over TCP (MQTT 3.1.1): each
/// subscribes at QoS 2 to its own topic, then publishes to the other's at QoS 0, 1 and 2.
/// Prints what each received, sorted; exits 1 on a timeout or a refused CONNECT.
const PAHO_WS_SCRIPT: &str = r#"
import sys, threading
import paho.mqtt.client as mqtt

ws_port, tcp_port = int(sys.argv[1]), int(sys.argv[2])
lock = threading.Condition()
received = []

def fail(why):
    print(why, file=sys.stderr, flush=True)
    sys.exit(1)

def start(name, protocol, transport, port, topic):
    connected, subscribed = threading.Event(), threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-" + name,
                    protocol=protocol, transport=transport)
    if transport == "websockets":
        c.ws_set_options(path="/mqtt")
    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            print(f"{name}: CONNACK {reason_code}", file=sys.stderr, flush=True)
        else:
            connected.set()
    def on_subscribe(client, userdata, mid, reason_codes, properties):
        subscribed.set()
    def on_message(client, userdata, message):
        with lock:
            received.append(f"{name} got {message.topic} qos={message.qos} "
                            f"{message.payload.decode()}")
            lock.notify_all()
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    if not connected.wait(10):
        fail(f"{name}: not connected")
    c.subscribe(topic, qos=2)
    if not subscribed.wait(10):
        fail(f"{name}: no SUBACK")
    return c

ws = start("ws", mqtt.MQTTv5, "websockets", ws_port, "paho/to-ws")
tcp = start("tcp", mqtt.MQTTv311, "tcp", tcp_port, "paho/to-tcp")
for qos in (0, 1, 2):
    for client, name, topic in ((ws, "ws", "paho/to-tcp"), (tcp, "tcp", "paho/to-ws")):
        info = client.publish(topic, f"from {name} at qos {qos}", qos=qos)
        info.wait_for_publish(10)
        if not info.is_published():
            fail(f"{name}: qos {qos} publish not completed")
with lock:
    if not lock.wait_for(lambda: len(received) >= 6, timeout=10):
        fail(f"only received {received}")
for c in (ws, tcp):
    c.disconnect()
    c.loop_stop()
for line in sorted(received):
    print(line)
"#;

#[test]
fn paho_python_over_websockets_exchanges_messages_with_a_tcp_client() {
    if !crate::interop::paho_available() {
        return;
    }
    let broker = ws_broker(|_| {});
    let out = Command::new("python3")
        .args([
            "-c",
            PAHO_WS_SCRIPT,
            &broker.addr.port().to_string(),
            &broker.addrs[1].port().to_string(),
        ])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        "tcp got paho/to-tcp qos=0 from ws at qos 0\n\
         tcp got paho/to-tcp qos=1 from ws at qos 1\n\
         tcp got paho/to-tcp qos=2 from ws at qos 2\n\
         ws got paho/to-ws qos=0 from tcp at qos 0\n\
         ws got paho/to-ws qos=1 from tcp at qos 1\n\
         ws got paho/to-ws qos=2 from tcp at qos 2\n"
    );
}

#[test]
fn check_config_accepts_websocket_listeners_and_names_a_bad_path() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let path = dir.path().join("ws.toml");
        std::fs::write(&path, text).unwrap();
        Command::new(env!("CARGO_BIN_EXE_mqttd"))
            .args(["--check-config", path.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let ok = check(
        "[[listener]]\nbind = \"127.0.0.1:8080\"\nwebsocket = true\n\
         [[listener]]\nbind = \"127.0.0.1:8081\"\nwebsocket = true\nwebsocket_path = \"/ws\"\n",
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = check("[[listener]]\nbind = \"127.0.0.1:8080\"\nwebsocket_path = \"/ws\"\n");
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("listener.websocket_path"), "{stderr}");
}
