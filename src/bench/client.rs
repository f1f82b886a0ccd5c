//! The bench's MQTT clients: connect, subscribe, and the publisher and subscriber loops. Each
//! client is one tokio task over one `Framed` socket, so a thread carries many connections.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{MissedTickBehavior, timeout};
use tokio_util::codec::{Encoder, Framed};

use super::payload::{self, Stamp};
use super::tracker::SequenceTracker;
use super::{BenchError, Shared};
use crate::mqtt::{
    Ack, Connect, Disconnect, MqttCodec, Packet, Properties, PropertyValues, ProtocolVersion,
    Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions,
};

/// How long the broker may take to answer CONNECT or SUBSCRIBE.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer and write high-water mark: big enough that one read takes many packets.
pub const BUFFER: usize = 64 * 1024;
/// The buffers of a connection that only connects and holds (the `conn` scenario): 64 KB
/// each made the generator spend a fifth of its time in page faults and heap growth.
pub const IDLE_BUFFER: usize = 512;
/// QoS 0 messages written per flush before yielding to the other tasks of the thread.
const QOS0_BATCH: usize = 64;
/// Packets a subscriber handles before it flushes its acknowledgements and counts them.
const READ_BATCH: usize = 1024;
/// After the publishers stop, a subscriber that hears nothing for this long stops waiting.
const IDLE_GRACE: Duration = Duration::from_millis(500);
/// A publisher waits at most this long for its last acknowledgements.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle subscriber looks whether the run is over.
const POLL: Duration = Duration::from_millis(50);
/// Connections per source address towards a loopback broker. Each 127.0.0.x has its own
/// ~28,000 ephemeral ports, and connecting slows down several times as they fill up (19,000
/// connections from 127.0.0.1 opened at 4k/s, 10,000 at 16k/s), so connection `i` comes from
/// 127.0.0.(1 + i / this).
const CONNECTIONS_PER_SOURCE: u32 = 5_000;

/// What every connection of a run shares.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub addr: String,
    pub version: ProtocolVersion,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Clean Start 0 and a Session Expiry Interval, instead of a clean session.
    pub persistent: bool,
    /// No PINGREQ is sent, so this is set longer than the run.
    pub keep_alive: u16,
    /// The initial size of each connection's read and write buffers.
    pub buffer: usize,
}

impl ConnectOptions {
    /// The local address connection `index` binds to (see `CONNECTIONS_PER_SOURCE`), or
    /// `None` to let the system choose, as it does for the first block.
    fn source(&self, index: u32) -> Option<SocketAddr> {
        let block = index / CONNECTIONS_PER_SOURCE;
        let SocketAddr::V4(target) = self.addr.parse().ok()? else {
            return None;
        };
        if block == 0 || !target.ip().is_loopback() {
            return None;
        }
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::LOCALHOST) + block);
        Some(SocketAddr::new(ip.into(), 0))
    }

    /// Opens connection `index`'s TCP stream.
    async fn open_tcp(&self, index: u32) -> std::io::Result<TcpStream> {
        let Some(source) = self.source(index) else {
            return TcpStream::connect(&self.addr).await;
        };
        let target: SocketAddr = self.addr.parse().map_err(std::io::Error::other)?;
        let socket = TcpSocket::new_v4()?;
        bind_address_no_port(&socket)?;
        socket.bind(source)?;
        socket.connect(target).await
    }
}

/// One connected client. Packets are read through `framed`; they are written by encoding
/// into `out` and writing it out on `flush`, so a batch of packets costs one write.
pub struct Conn {
    pub client_id: String,
    framed: Framed<TcpStream, MqttCodec>,
    encoder: MqttCodec,
    out: BytesMut,
    /// The broker's Receive Maximum from CONNACK: a cap on our QoS 1/2 window [MQTT-3.3.4-7].
    receive_maximum: u16,
}

impl Conn {
    fn error(&self, reason: impl Into<String>) -> BenchError {
        BenchError::Client {
            client: self.client_id.clone(),
            reason: reason.into(),
        }
    }

    async fn send(&mut self, packet: Packet) -> Result<(), BenchError> {
        self.feed(packet).await?;
        self.flush().await
    }

    /// Queues a packet; writes the queue out once it is past `BUFFER`.
    async fn feed(&mut self, packet: Packet) -> Result<(), BenchError> {
        if let Err(e) = self.encoder.encode(packet, &mut self.out) {
            return Err(self.error(format!("encode: {e}")));
        }
        if self.out.len() >= BUFFER {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), BenchError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = self.framed.get_mut().write_all(&self.out).await;
        self.out.clear();
        result.map_err(|e| self.error(format!("send: {e}")))
    }

    /// Turns the result of `framed.next()` into a packet or an error naming the client.
    fn received(
        &self,
        item: Option<Result<Packet, crate::mqtt::DecodeError>>,
    ) -> Result<Packet, BenchError> {
        match item {
            Some(Ok(packet)) => Ok(packet),
            Some(Err(e)) => Err(self.error(format!("receive: {e}"))),
            None => Err(self.error("the broker closed the connection")),
        }
    }

    async fn recv_within(&mut self, limit: Duration) -> Result<Packet, BenchError> {
        match timeout(limit, self.framed.next()).await {
            Ok(item) => self.received(item),
            Err(_) => Err(self.error(format!("no answer within {limit:?}"))),
        }
    }

    /// Sends DISCONNECT; the broker may already be gone, which is no longer our concern.
    pub async fn disconnect(mut self) {
        let _ = self.send(Packet::Disconnect(Disconnect::default())).await;
    }
}

/// Lets `connect` choose the local port, unique for the whole address pair. Without it, `bind`
/// looks for a port no socket of any address holds, scanning past every port 127.0.0.1's
/// connections already hold: 10,000 connections opened at 2-6k/s instead of 16k/s.
#[cfg(target_os = "linux")]
fn bind_address_no_port(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is the open socket `socket` owns, and the option value is a
    // `c_int` of the length given, as IP_BIND_ADDRESS_NO_PORT expects.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn bind_address_no_port(_: &TcpSocket) -> std::io::Result<()> {
    Ok(())
}

/// Opens connection `index` (numbered from 0 within its scenario role) and completes
/// CONNECT/CONNACK.
pub async fn connect(
    options: &ConnectOptions,
    index: u32,
    client_id: String,
) -> Result<Conn, BenchError> {
    let fail = |reason: String| BenchError::Client {
        client: client_id.clone(),
        reason,
    };
    let stream = timeout(HANDSHAKE_TIMEOUT, options.open_tcp(index))
        .await
        .map_err(|_| fail(format!("TCP connect to {} timed out", options.addr)))?
        .map_err(|e| fail(format!("TCP connect to {}: {e}", options.addr)))?;
    stream
        .set_nodelay(true)
        .map_err(|e| fail(format!("TCP_NODELAY: {e}")))?;
    let codec = MqttCodec::new(options.version, 268_435_460);
    let mut conn = Conn {
        client_id: client_id.clone(),
        framed: Framed::with_capacity(stream, codec.clone(), options.buffer),
        encoder: codec,
        out: BytesMut::with_capacity(options.buffer),
        receive_maximum: u16::MAX,
    };
    let properties = if options.version.is_v5() {
        Properties::from(PropertyValues {
            // The subscriber side must never be the one that throttles the broker.
            receive_maximum: Some(u16::MAX),
            session_expiry_interval: options.persistent.then_some(300),
            ..PropertyValues::default()
        })
    } else {
        Properties::default()
    };
    conn.send(Packet::Connect(Box::new(Connect {
        protocol: options.version,
        clean_start: !options.persistent,
        keep_alive: options.keep_alive,
        properties,
        client_id,
        will: None,
        username: options.username.clone(),
        password: options
            .password
            .as_ref()
            .map(|p| Bytes::copy_from_slice(p.as_bytes())),
    })))
    .await?;
    match conn.recv_within(HANDSHAKE_TIMEOUT).await? {
        Packet::ConnAck(ack) if ack.reason == ReasonCode::Success => {
            match ack.properties.receive_maximum {
                Some(0) => Err(conn.error("CONNACK with Receive Maximum 0")),
                Some(max) => {
                    conn.receive_maximum = max;
                    Ok(conn)
                }
                None => Ok(conn),
            }
        }
        Packet::ConnAck(ack) => Err(conn.error(format!("CONNACK {:?}", ack.reason))),
        other => Err(conn.error(format!("expected CONNACK, got {}", other.name()))),
    }
}

/// Subscribes to one filter and waits for a SUBACK granting the QoS asked for.
pub async fn subscribe(conn: &mut Conn, filter: &str, qos: QoS) -> Result<(), BenchError> {
    conn.send(Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![(
            filter.to_string(),
            SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            },
        )],
    }))
    .await?;
    match conn.recv_within(HANDSHAKE_TIMEOUT).await? {
        Packet::SubAck(ack) => match ack.reasons.first() {
            Some(&reason) if reason as u8 == qos as u8 => Ok(()),
            // A lower grant would quietly turn a QoS 1 run into a QoS 0 one.
            Some(reason) => Err(conn.error(format!("SUBACK {reason:?} for {filter:?}"))),
            None => Err(conn.error("SUBACK without a reason code")),
        },
        other => Err(conn.error(format!("expected SUBACK, got {}", other.name()))),
    }
}

/// What one publisher is to do.
pub struct PublisherPlan {
    pub id: u32,
    pub topic: String,
    pub qos: QoS,
    pub payload: usize,
    /// Unacknowledged QoS 1/2 messages allowed at once (1..=65535).
    pub inflight: usize,
    /// Time between messages for a fixed rate; `None` publishes as fast as possible.
    pub interval: Option<Duration>,
    pub deadline: Instant,
}

/// Packet ids of the messages a publisher has in flight, where each one is and when it was
/// fed.
struct Window {
    /// Indexed by packet id.
    state: Vec<Slot>,
    /// Indexed by packet id: when the PUBLISH holding the id was fed (ns since the epoch of
    /// `Shared`), for the acknowledgement latency. Stale for free ids.
    sent_ns: Vec<u64>,
    used: usize,
    next_id: u16,
    last_id: u16,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Free,
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent,
    /// PUBREL sent; waiting for PUBCOMP.
    Released,
}

impl Window {
    /// Ids 1..=`ids`: no more can be in flight at once, and the tables stay small (a fan-in
    /// run has thousands of publishers).
    fn new(ids: u16) -> Window {
        let ids = ids.max(1);
        Window {
            state: vec![Slot::Free; usize::from(ids) + 1],
            sent_ns: vec![0; usize::from(ids) + 1],
            used: 0,
            next_id: 1,
            last_id: ids,
        }
    }

    /// A free id for a PUBLISH fed at `now_ns`; the caller keeps `used` below the number of
    /// ids, so one exists.
    fn take(&mut self, now_ns: u64) -> u16 {
        loop {
            let id = self.next_id;
            self.next_id = if id >= self.last_id { 1 } else { id + 1 };
            if self.state[usize::from(id)] == Slot::Free {
                self.state[usize::from(id)] = Slot::Sent;
                self.sent_ns[usize::from(id)] = now_ns;
                self.used += 1;
                return id;
            }
        }
    }

    /// When the PUBLISH that took `id` was fed.
    fn sent_ns(&self, id: u16) -> u64 {
        self.sent_ns.get(usize::from(id)).copied().unwrap_or(0)
    }

    /// An id outside the window (a broker acknowledging what was never sent) is in no slot.
    fn is(&self, id: u16, slot: Slot) -> bool {
        self.state.get(usize::from(id)) == Some(&slot)
    }

    fn set(&mut self, id: u16, slot: Slot) {
        if slot == Slot::Free {
            self.used -= 1;
        }
        self.state[usize::from(id)] = slot;
    }
}

/// The messages a publisher sent, how long their acknowledgements took, and why it stopped
/// early if it did.
pub struct PublisherOutcome {
    pub sent: u64,
    /// Time (ns) from feeding a QoS 1/2 PUBLISH to reading its PUBACK or PUBREC, for the
    /// acknowledgements read after the warm-up. Empty at QoS 0.
    pub ack_latency: Histogram<u64>,
    pub error: Option<BenchError>,
}

/// Publishes until the deadline, then waits for the last acknowledgements and disconnects.
pub async fn publish(mut conn: Conn, plan: PublisherPlan, shared: Arc<Shared>) -> PublisherOutcome {
    let mut publisher = Publisher {
        window: Window::new(u16::try_from(plan.inflight).unwrap_or(u16::MAX)),
        buf: BytesMut::with_capacity(BUFFER),
        sent: 0,
        ack_latency: new_histogram(),
    };
    let result = publisher.run(&mut conn, &plan, &shared).await;
    if result.is_ok() {
        conn.disconnect().await;
    }
    PublisherOutcome {
        sent: publisher.sent,
        ack_latency: publisher.ack_latency,
        error: result.err(),
    }
}

struct Publisher {
    window: Window,
    /// Payloads are carved from this buffer, so a message costs no allocation of its own.
    buf: BytesMut,
    sent: u64,
    /// See `PublisherOutcome::ack_latency`.
    ack_latency: Histogram<u64>,
}

impl Publisher {
    async fn run(
        &mut self,
        conn: &mut Conn,
        plan: &PublisherPlan,
        shared: &Shared,
    ) -> Result<(), BenchError> {
        let window = if plan.qos == QoS::AtMostOnce {
            usize::MAX
        } else {
            plan.inflight.min(usize::from(conn.receive_maximum))
        };
        let mut ticker = plan.interval.map(|period| {
            let mut ticker = tokio::time::interval(period);
            // After a stall, catch up at once, so the rate holds on average.
            ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
            ticker
        });
        while Instant::now() < plan.deadline {
            let Some(ticker) = ticker.as_mut() else {
                if plan.qos == QoS::AtMostOnce {
                    for _ in 0..QOS0_BATCH {
                        self.feed_next(conn, plan, shared).await?;
                    }
                    conn.flush().await?;
                    tokio::task::yield_now().await;
                    continue;
                }
                while self.window.used < window {
                    self.feed_next(conn, plan, shared).await?;
                }
                conn.flush().await?;
                self.read_acks(conn, plan.deadline, shared).await?;
                continue;
            };
            let deadline = tokio::time::Instant::from_std(plan.deadline);
            tokio::select! {
                _ = ticker.tick(), if self.window.used < window => {
                    self.feed_next(conn, plan, shared).await?;
                    conn.flush().await?;
                }
                item = conn.framed.next() => {
                    let packet = conn.received(item)?;
                    self.on_packet(conn, packet, shared).await?;
                    conn.flush().await?;
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
        let drain_until = Instant::now() + DRAIN_TIMEOUT;
        while self.window.used > 0 {
            if Instant::now() >= drain_until {
                return Err(conn.error(format!(
                    "{} messages still unacknowledged {DRAIN_TIMEOUT:?} after the end",
                    self.window.used
                )));
            }
            self.read_acks(conn, drain_until, shared).await?;
        }
        Ok(())
    }

    /// Writes the next message without flushing.
    async fn feed_next(
        &mut self,
        conn: &mut Conn,
        plan: &PublisherPlan,
        shared: &Shared,
    ) -> Result<(), BenchError> {
        let stamp = Stamp {
            publisher: plan.id,
            sequence: self.sent,
            sent_ns: shared.now_ns(),
        };
        let payload = payload::encode(stamp, plan.payload, &mut self.buf);
        if self.buf.capacity() < plan.payload {
            // `encode` reserves too, but a large block at once keeps allocations rare.
            self.buf.reserve(BUFFER.max(plan.payload));
        }
        // The acknowledgement latency starts here, at the stamp's time, although the PUBLISH may
        // sit in the write buffer until the batch is flushed.
        let packet_id = (plan.qos != QoS::AtMostOnce).then(|| self.window.take(stamp.sent_ns));
        conn.feed(Packet::Publish(Box::new(Publish {
            dup: false,
            qos: plan.qos,
            retain: false,
            topic: plan.topic.clone(),
            packet_id,
            properties: Properties::default(),
            payload,
        })))
        .await?;
        self.sent += 1;
        shared.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Waits (until `until`) for one packet, then takes whatever else is already buffered.
    async fn read_acks(
        &mut self,
        conn: &mut Conn,
        until: Instant,
        shared: &Shared,
    ) -> Result<(), BenchError> {
        let limit = until.saturating_duration_since(Instant::now());
        let Ok(item) = timeout(limit, conn.framed.next()).await else {
            return Ok(());
        };
        let packet = conn.received(item)?;
        self.on_packet(conn, packet, shared).await?;
        while let Some(item) = conn.framed.next().now_or_never() {
            let packet = conn.received(item)?;
            self.on_packet(conn, packet, shared).await?;
        }
        conn.flush().await
    }

    /// Acknowledgements move the window on; PUBRELs are fed, not flushed. A successful PUBACK
    /// or PUBREC records the acknowledgement latency.
    async fn on_packet(
        &mut self,
        conn: &mut Conn,
        packet: Packet,
        shared: &Shared,
    ) -> Result<(), BenchError> {
        let (ack, expected, next) = match packet {
            Packet::PubAck(ack) => (ack, Slot::Sent, Slot::Free),
            Packet::PubRec(ack) if ack.reason.is_failure() => (ack, Slot::Sent, Slot::Free),
            Packet::PubRec(ack) => (ack, Slot::Sent, Slot::Released),
            Packet::PubComp(ack) => (ack, Slot::Released, Slot::Free),
            Packet::Disconnect(d) => {
                return Err(conn.error(format!("the broker disconnected: {:?}", d.reason)));
            }
            Packet::PingResp => return Ok(()),
            other => return Err(conn.error(format!("unexpected {}", other.name()))),
        };
        if !self.window.is(ack.packet_id, expected) {
            return Err(conn.error(format!(
                "acknowledgement for packet id {} that is not awaiting it",
                ack.packet_id
            )));
        }
        if ack.reason.is_failure() {
            return Err(conn.error(format!("the broker refused a message: {:?}", ack.reason)));
        }
        if expected == Slot::Sent {
            // Like the end-to-end latency: only what arrives after the warm-up counts.
            let now = shared.now_ns();
            if now >= shared.measure_from_ns {
                let sent = self.window.sent_ns(ack.packet_id);
                self.ack_latency
                    .saturating_record(now.saturating_sub(sent).max(1));
            }
        }
        self.window.set(ack.packet_id, next);
        if next == Slot::Released {
            conn.feed(Packet::PubRel(Ack {
                packet_id: ack.packet_id,
                ..Ack::default()
            }))
            .await?;
        }
        Ok(())
    }
}

/// What one subscriber saw.
pub struct SubscriberOutcome {
    pub tracker: SequenceTracker,
    /// End-to-end latency (ns) of the messages received after the warm-up.
    pub latency: Histogram<u64>,
    /// Payloads too short to carry a bench stamp.
    pub malformed: u64,
    pub error: Option<BenchError>,
}

/// Receives until every publisher in `sources` has finished and all it sent has arrived, or
/// nothing has arrived for `IDLE_GRACE` since they finished.
pub async fn receive(mut conn: Conn, sources: Vec<u32>, shared: Arc<Shared>) -> SubscriberOutcome {
    let mut subscriber = Subscriber {
        tracker: SequenceTracker::default(),
        latency: new_histogram(),
        malformed: 0,
        awaiting_rel: vec![false; usize::from(u16::MAX) + 1],
    };
    let result = subscriber.run(&mut conn, &sources, &shared).await;
    if result.is_ok() {
        conn.disconnect().await;
    }
    SubscriberOutcome {
        tracker: subscriber.tracker,
        latency: subscriber.latency,
        malformed: subscriber.malformed,
        error: result.err(),
    }
}

/// A histogram of nanoseconds from 1 ns to 10 minutes, 3 significant digits.
#[allow(
    clippy::expect_used,
    reason = "the bounds are constants, valid as every run shows; no peer input is involved"
)]
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("constant, valid bounds")
}

struct Subscriber {
    tracker: SequenceTracker,
    latency: Histogram<u64>,
    malformed: u64,
    /// By packet id: answered with PUBREC and not yet released. A PUBLISH re-sent with such an
    /// id is the same message, not a duplicate delivery.
    awaiting_rel: Vec<bool>,
}

impl Subscriber {
    async fn run(
        &mut self,
        conn: &mut Conn,
        sources: &[u32],
        shared: &Shared,
    ) -> Result<(), BenchError> {
        let mut last_message = Instant::now();
        loop {
            let item = match timeout(POLL, conn.framed.next()).await {
                Ok(item) => item,
                Err(_) => {
                    if self.done(sources, shared, last_message) {
                        return Ok(());
                    }
                    continue;
                }
            };
            let packet = conn.received(item)?;
            let mut messages = self.on_packet(conn, packet, shared).await?;
            let mut handled = 1;
            while handled < READ_BATCH {
                let Some(item) = conn.framed.next().now_or_never() else {
                    break;
                };
                let packet = conn.received(item)?;
                messages += self.on_packet(conn, packet, shared).await?;
                handled += 1;
            }
            conn.flush().await?;
            if messages > 0 {
                shared.received.fetch_add(messages, Ordering::Relaxed);
                last_message = Instant::now();
            }
            if self.done(sources, shared, last_message) {
                return Ok(());
            }
        }
    }

    fn done(&self, sources: &[u32], shared: &Shared, last_message: Instant) -> bool {
        let Some(sent) = shared.final_sent() else {
            return false;
        };
        let complete = sources
            .iter()
            .all(|&p| self.tracker.received_from(p) >= sent[p as usize]);
        complete || last_message.elapsed() >= IDLE_GRACE
    }

    /// Handles one packet; returns 1 for a delivered message, else 0. Acks are fed, not flushed.
    async fn on_packet(
        &mut self,
        conn: &mut Conn,
        packet: Packet,
        shared: &Shared,
    ) -> Result<u64, BenchError> {
        let publish = match packet {
            Packet::Publish(publish) => publish,
            Packet::PubRel(rel) => {
                self.awaiting_rel[usize::from(rel.packet_id)] = false;
                conn.feed(Packet::PubComp(Ack {
                    packet_id: rel.packet_id,
                    ..Ack::default()
                }))
                .await?;
                return Ok(0);
            }
            Packet::Disconnect(d) => {
                return Err(conn.error(format!("the broker disconnected: {:?}", d.reason)));
            }
            Packet::PingResp => return Ok(0),
            other => return Err(conn.error(format!("unexpected {}", other.name()))),
        };
        match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => {}
            (QoS::AtLeastOnce, Some(packet_id)) => {
                conn.feed(Packet::PubAck(Ack {
                    packet_id,
                    ..Ack::default()
                }))
                .await?;
            }
            (QoS::ExactlyOnce, Some(packet_id)) => {
                let resent = self.awaiting_rel[usize::from(packet_id)];
                conn.feed(Packet::PubRec(Ack {
                    packet_id,
                    ..Ack::default()
                }))
                .await?;
                if resent {
                    return Ok(0);
                }
                self.awaiting_rel[usize::from(packet_id)] = true;
            }
            (_, None) => return Err(conn.error("QoS 1/2 PUBLISH without a packet id")),
        }
        let Some(stamp) = payload::decode(&publish.payload) else {
            self.malformed += 1;
            return Ok(0);
        };
        self.tracker.record(stamp.publisher, stamp.sequence);
        let now = shared.now_ns();
        if now >= shared.measure_from_ns {
            self.latency
                .saturating_record(now.saturating_sub(stamp.sent_ns).max(1));
        }
        Ok(1)
    }
}

/// Connects and measures how long CONNECT/CONNACK took (the `conn` scenario).
pub async fn open_and_time(
    options: &ConnectOptions,
    index: u32,
    client_id: String,
) -> Result<(Conn, Duration), BenchError> {
    let started = Instant::now();
    let conn = connect(options, index, client_id).await?;
    Ok((conn, started.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(addr: &str) -> ConnectOptions {
        ConnectOptions {
            addr: addr.into(),
            version: ProtocolVersion::V5,
            username: None,
            password: None,
            persistent: false,
            keep_alive: 60,
            buffer: BUFFER,
        }
    }

    #[test]
    fn loopback_connections_spread_over_source_addresses_in_blocks() {
        let loopback = options("127.0.0.1:1883");
        assert_eq!(loopback.source(0), None);
        assert_eq!(loopback.source(CONNECTIONS_PER_SOURCE - 1), None);
        assert_eq!(
            loopback.source(CONNECTIONS_PER_SOURCE),
            Some("127.0.0.2:0".parse().unwrap())
        );
        assert_eq!(
            loopback.source(3 * CONNECTIONS_PER_SOURCE + 7),
            Some("127.0.0.4:0".parse().unwrap())
        );
    }

    #[test]
    fn other_brokers_get_the_systems_choice_of_source() {
        for addr in ["192.0.2.1:1883", "[::1]:1883", "localhost:1883"] {
            assert_eq!(options(addr).source(CONNECTIONS_PER_SOURCE), None, "{addr}");
        }
    }
}
