//! The test harness: a real broker per test (own thread, own actix System, 127.0.0.1:0, a
//! SQLite file in a temp dir) and a raw MQTT client speaking through mqttd's own codec.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;

use mqttd::Config;
use mqttd::mqtt::{
    Ack, Connect, DecodeError, MqttCodec, Packet, Properties, ProtocolVersion, QoS, ReasonCode,
    Subscribe, SubscriptionOptions,
};
use mqttd::stats::Counters;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::codec::Framed;

/// Long enough for a loaded CI machine, short enough that a hang fails fast.
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub struct TestBroker {
    /// The first listener's address.
    pub addr: SocketAddr,
    /// Every listener's address, in configuration order.
    pub addrs: Vec<SocketAddr>,
    /// The `[http]` server's address, when the test configured one.
    pub http_addr: Option<SocketAddr>,
    pub db_path: PathBuf,
    /// The broker's drop counters.
    pub counters: Arc<Counters>,
    stop: Option<oneshot::Sender<()>>,
    /// Asks the broker thread for `Broker::reload_acl` (what SIGHUP does).
    reload_acl: tokio::sync::mpsc::UnboundedSender<oneshot::Sender<mqttd::messages::AclReload>>,
    thread: Option<JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

/// A broker with test defaults: anonymous clients allowed, 2 session Arbiters.
pub fn start_broker() -> TestBroker {
    start_broker_with(|_| {})
}

/// A broker whose configuration `adjust` may change (limits, anonymous access...).
pub fn start_broker_with(adjust: impl FnOnce(&mut Config)) -> TestBroker {
    let dir = tempfile::tempdir().expect("tempdir");
    let db_path = dir.path().join("broker.db");
    let mut broker = start_broker_on(db_path, adjust);
    broker._dir = Some(dir);
    broker
}

/// A broker on a given database file (to restart on the same file).
pub fn start_broker_on(db_path: PathBuf, adjust: impl FnOnce(&mut Config)) -> TestBroker {
    let mut config = Config {
        listeners: vec![mqttd::config::ListenerConfig::tcp(
            "127.0.0.1:0".parse().unwrap(),
        )],
        db_path: db_path.clone(),
        allow_anonymous: Some(true),
        workers: 2,
        // Tests that want `$SYS` updates turn them on.
        sys_interval: 0,
        ..Config::default()
    };
    adjust(&mut config);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, mut stop_rx) = oneshot::channel();
    let (reload_tx, mut reload_rx) =
        tokio::sync::mpsc::unbounded_channel::<oneshot::Sender<mqttd::messages::AclReload>>();
    let thread = std::thread::spawn(move || {
        let system = actix::System::new();
        system.block_on(async move {
            let broker = match mqttd::start(config).await {
                Ok(b) => b,
                Err(e) => {
                    addr_tx.send(Err(e.to_string())).unwrap();
                    return;
                }
            };
            addr_tx
                .send(Ok((
                    broker.local_addrs.clone(),
                    broker.http_addr,
                    broker.counters.clone(),
                )))
                .unwrap();
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    Some(reply) = reload_rx.recv() => {
                        let _ = reply.send(broker.reload_acl().await);
                    }
                }
            }
            broker.shutdown().await;
        });
    });
    let (addrs, http_addr, counters) = addr_rx
        .recv()
        .expect("broker thread")
        .expect("broker start");
    TestBroker {
        addr: addrs[0],
        addrs,
        http_addr,
        db_path,
        counters,
        stop: Some(stop_tx),
        reload_acl: reload_tx,
        thread: Some(thread),
        _dir: None,
    }
}

impl TestBroker {
    /// Clean shutdown (as on SIGTERM), waiting until it is complete.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("broker thread panicked");
        }
    }

    /// `Broker::reload_acl` (SIGHUP): the connected clients reload their ACL rules. Returns once
    /// every session has answered.
    pub async fn reload_acl(&self) -> mqttd::messages::AclReload {
        let (tx, rx) = oneshot::channel();
        self.reload_acl.send(tx).expect("broker thread");
        tokio::time::timeout(TIMEOUT, rx)
            .await
            .expect("ACL reload in time")
            .expect("broker thread")
    }

    /// A connection to the broker's SQLite file, to check what it recorded.
    pub fn db(&self) -> diesel::SqliteConnection {
        mqttd::db::open_connection(
            &self.db_path.to_string_lossy(),
            mqttd::persist::Durability::default(),
        )
        .expect("open db")
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A client that sends and receives whole packets, or raw bytes.
pub struct Client {
    pub framed: Framed<TcpStream, MqttCodec>,
}

impl Client {
    /// Opens a TCP connection; packets are encoded and decoded as `version`.
    pub async fn open(addr: SocketAddr, version: ProtocolVersion) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Client {
            framed: Framed::new(stream, MqttCodec::new(version, 268_435_460)),
        }
    }

    /// Opens a connection and completes CONNECT/CONNACK with a clean session; panics unless
    /// the CONNACK is a success.
    pub async fn connected(addr: SocketAddr, version: ProtocolVersion, client_id: &str) -> Client {
        let mut client = Client::open(addr, version).await;
        client.send(connect(version, client_id)).await;
        match client.recv().await {
            Some(Ok(Packet::ConnAck(ack))) if ack.reason == mqttd::mqtt::ReasonCode::Success => {}
            other => panic!("expected a successful CONNACK, got {other:?}"),
        }
        client
    }

    pub async fn send(&mut self, packet: Packet) {
        self.framed.send(packet).await.expect("send");
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.framed
            .get_mut()
            .write_all(bytes)
            .await
            .expect("send raw");
    }

    /// The next packet; `None` when the broker closed the connection. Panics after TIMEOUT.
    pub async fn recv(&mut self) -> Option<Result<Packet, DecodeError>> {
        tokio::time::timeout(TIMEOUT, self.framed.next())
            .await
            .expect("timed out waiting for a packet")
    }

    /// Expects `packet` next.
    pub async fn expect(&mut self, packet: Packet) {
        match self.recv().await {
            Some(Ok(got)) => assert_eq!(got, packet),
            other => panic!("expected {packet:?}, got {other:?}"),
        }
    }

    /// Expects the broker to close the connection with nothing more sent.
    pub async fn expect_closed(&mut self) {
        match self.recv().await {
            None | Some(Err(DecodeError::Io(_))) => {}
            Some(other) => panic!("expected the connection to close, got {other:?}"),
        }
    }

    /// Everything the broker sends until it closes the connection, as raw bytes.
    pub async fn read_to_close(self) -> Vec<u8> {
        let parts = self.framed.into_parts();
        let mut bytes = parts.read_buf.to_vec();
        let mut stream = parts.io;
        tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut bytes))
            .await
            .expect("timed out waiting for the broker to close")
            .ok();
        bytes
    }
}

/// A CONNECT with a clean session, keep-alive 60 s and no credentials.
pub fn connect(version: ProtocolVersion, client_id: &str) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
    }))
}

/// A CONNECT with a username and password.
pub fn connect_with_credentials(
    version: ProtocolVersion,
    client_id: &str,
    username: &str,
    password: &str,
) -> Packet {
    let Packet::Connect(mut c) = connect(version, client_id) else {
        unreachable!()
    };
    c.username = Some(username.into());
    c.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    Packet::Connect(c)
}

/// A SUBSCRIBE to one filter at QoS 1.
pub fn subscribe_packet(packet_id: u16, filter: &str) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id,
        properties: Properties::default(),
        filters: vec![(
            filter.to_owned(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        )],
    })
}

/// A PUBACK 0x00.
pub fn puback_packet(packet_id: u16) -> Packet {
    Packet::PubAck(Ack {
        packet_id,
        reason: ReasonCode::Success,
        properties: Properties::default(),
    })
}

/// Sends raw bytes on a fresh connection and returns everything the broker answers until it
/// closes the connection.
pub async fn exchange_raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut client = Client::open(addr, ProtocolVersion::V5).await;
    client.send_raw(bytes).await;
    client.read_to_close().await
}

/// After an abuse case: a fresh client must still be served (the "canary").
pub async fn assert_canary(addr: SocketAddr) {
    let mut client = Client::connected(addr, ProtocolVersion::V5, "canary").await;
    client.send(Packet::PingReq).await;
    client.expect(Packet::PingResp).await;
}
