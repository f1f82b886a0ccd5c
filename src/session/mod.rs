//! The Session actor: one per network connection.
//!
//! Bytes become packets in the stream added at start (see `reader` and `mqtt::MqttCodec`);
//! every packet goes through the single `dispatch` match, every error through `fail`, which is
//! the only place that sends a refusing CONNACK or a server DISCONNECT. Replies are written
//! with a `FramedWrite`, opened when CONNECT reveals the protocol version.

mod bypass;
mod connect;
mod deliver;
mod error;
mod publish;
mod read_gate;
mod reader;
mod send_timeout;
mod subscribe;

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Weak};
use std::time::Duration;

use actix::io::{FramedWrite, WriteHandler};
use actix::prelude::*;
use log::{debug, info, warn};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

pub use bypass::{Bypass, DirectWrites, TcpOut, thread_parks};
use bypass::{CountingCodec, WriteWatch};
pub use error::SessionError;
use read_gate::{Gated, ReadGate};
use reader::{Inbound, PacketStream};
pub use send_timeout::Abort;
use send_timeout::SendTimeout;

use crate::acl::{Acl, AclAction};
use crate::admission::ConnectionSlot;
use crate::broker::Shared;
use crate::clock::unix_millis;
use crate::config::AclDefault;
use crate::message::{AppMessage, Delivery};
use crate::messages::{AclRefreshed, Close, LoadAcl, RecordDisconnect, RefreshAcl, Unregister};
use crate::mqtt::{
    ConnAck, Connect, DecodeError, Disconnect, EncodeError, Frame, MqttCodec, Packet,
    ProtocolVersion, QoS, ReasonCode, Will,
};
use crate::registry::router::{InRegistry, Outlet, RouteCache};
use crate::stats::Counters;

/// How long a closing connection may take to flush its last packet before it is dropped.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

pub type BoxedRead = Box<dyn AsyncRead + Unpin>;
pub type BoxedWrite = Box<dyn AsyncWrite + Unpin>;
type PacketWriter = FramedWrite<Frame<AppMessage>, SendTimeout<BoxedWrite>, CountingCodec>;

/// The writing half: nothing may be written before CONNECT tells the protocol version.
enum Writer {
    Unopened(Option<SendTimeout<BoxedWrite>>),
    Open(PacketWriter),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for CONNECT; the connect timeout runs.
    AwaitingConnect,
    /// CONNECT read, authentication and registration under way; replies use this version.
    Connecting(ProtocolVersion),
    Connected,
    /// A final packet (if any) is being flushed; every further packet is ignored, so nothing
    /// pipelined after a refused CONNECT is processed [MQTT-3.1.4-2].
    Closing,
}

/// Where an outbound QoS 1/2 PUBLISH is in its exchange (§4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outbound {
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    Qos1Sent,
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    Qos2Sent,
    /// PUBREL sent, waiting for PUBCOMP.
    Released,
    /// Lent to the bypass, which may send a QoS 1/2 PUBLISH with it (see `Session::lend_ids`).
    Lent,
}

/// An acknowledgement (PUBACK/PUBREC) owed to the client, in arrival order.
struct PendingAck {
    qos: QoS,
    packet_id: u16,
    reason: ReasonCode,
    state: AckState,
}

enum AckState {
    /// Can be sent as soon as those before it are.
    Ready,
    /// Waits until the Registry has queued every delivery of the message.
    Routing(tokio::sync::oneshot::Receiver<bool>),
    /// A future of this session is waiting on the Registry for it.
    Waiting,
}

/// The hasher of maps keyed by packet id.
type IdHash = foldhash::fast::RandomState;

/// What the session knows once CONNECT was read.
struct Client {
    client_id: Arc<str>,
    username: Option<String>,
    protocol: ProtocolVersion,
    /// The keep-alive in force (Server Keep Alive if the server imposed one), seconds.
    keep_alive: u16,
    /// The Session Expiry Interval granted at CONNECT, or set by DISCONNECT (0: the session
    /// ends with the connection).
    session_expiry: u32,
    /// CONNACK 0x00 was sent.
    accepted: bool,
    /// The connect row is committed, so the disconnect must be recorded too.
    recorded: bool,
    /// The client's authorization rules (loaded at CONNECT).
    acl: Acl,
    /// Published when the connection ends, unless DISCONNECT 0x00 discarded it
    /// [MQTT-3.1.2-8] [MQTT-3.1.2-10]. Boxed: most clients have none, and a `Will` is
    /// 400 bytes that every idle connection would carry.
    will: Option<Box<Will>>,
    /// Packet ids of inbound QoS 2 PUBLISH answered with PUBREC and awaiting PUBREL.
    awaiting_rel: HashSet<u16, IdHash>,
    /// Outbound QoS 1/2 PUBLISH not yet completed, by packet id.
    inflight: HashMap<u16, Outbound, IdHash>,
    /// Where the search for the next free packet id starts.
    next_packet_id: u16,
    /// Entries of `inflight` that are `Lent`.
    lent: usize,
    /// The client's Receive Maximum: the cap on `inflight` [MQTT-3.3.4-9].
    receive_maximum: u16,
    /// The client's Maximum Packet Size: larger deliveries are dropped for it [MQTT-3.1.2-25].
    maximum_packet_size: Option<u32>,
    /// The client's Topic Alias Maximum.
    topic_alias_maximum: u16,
    /// Made with the first alias: most clients use none, and two empty maps would cost every
    /// idle connection 96 bytes.
    aliases: Option<Box<Aliases>>,
}

/// Topic aliases in both directions (§3.3.2.3.4).
#[derive(Default)]
struct Aliases {
    /// Set by the client towards the broker.
    inbound: HashMap<u16, Arc<str>>,
    /// Given by the broker to the topics it sends.
    outbound: HashMap<Arc<str>, u16>,
}

pub struct Session {
    conn_id: u64,
    peer: SocketAddr,
    shared: Arc<Shared>,
    _slot: ConnectionSlot,
    writer: Writer,
    reader: Option<BoxedRead>,
    /// Ends the connection from outside while the actor is paused on a full socket.
    abort: Arc<Abort>,
    /// The username proven by the client certificate (`identity_as_username`), if any.
    cert_username: Option<String>,
    phase: Phase,
    client: Option<Client>,
    /// The receiving end of this client's delivery queue; `None` while the pump holds it.
    deliveries: Option<mpsc::Receiver<Delivery>>,
    /// `deliveries` was created (see `open_queue`).
    queue_opened: bool,
    /// A pump future is waiting on `deliveries`.
    pumping: bool,
    /// Acknowledgements owed to the client, in the order its PUBLISH packets arrived.
    acks: VecDeque<PendingAck>,
    /// Deliveries that cannot be written yet (Receive Maximum reached): at most one pump batch
    /// from the queue, plus the retained messages of a new subscription (shared `Arc`s).
    pending: VecDeque<Delivery>,
    /// How long the client may now stay silent: the connect timeout until CONNECT, then
    /// 1.5 x Keep Alive once connected (see `reader`).
    silence_limit: Rc<Cell<Option<Duration>>>,
    /// Recorded in the database when the connection ends; most reasons are fixed texts.
    end_reason: Cow<'static, str>,
    /// The client identifier of the CONNECT being handled, as sent, for the log of a refusal
    /// that comes before the identifier is accepted.
    connect_id: Option<Box<str>>,
    /// `client.inflight.len()`, for the admin API (see `ConnectionInfo`).
    inflight_gauge: Arc<AtomicUsize>,
    /// This session's messages waiting in the Registry's mailbox (see `registry::router`).
    /// Created with the first message the session hands to the Registry.
    in_registry: Option<Arc<InRegistry>>,
    /// The routes of the last topic this session published to (see `registry::router`).
    routes: Option<Box<RouteCache>>,
    /// Closed while the session waits for room in a subscriber's queue (see `read_gate`).
    gate: Rc<ReadGate>,
    /// Such waits under way.
    holds: usize,
    /// Packets that arrived during a wait (already read), handled in order after it.
    /// Boxed: most connections never wait, and an empty queue would cost each 32 bytes.
    #[allow(clippy::box_collection)]
    held: Option<Box<VecDeque<Result<Packet, DecodeError>>>>,
    /// A plain TCP connection's socket, for the bypass made with the delivery queue.
    socket: Option<Weak<OwnedWriteHalf>>,
    /// Opened to publishers' threads while this session is idle (see `bypass`).
    bypass: Option<Arc<Bypass>>,
    /// What the writer has not yet handed to the socket.
    watch: Rc<WriteWatch>,
}

impl Client {
    fn may_publish(&self, topic: &str) -> bool {
        may_publish(&self.acl, topic)
    }

    /// Whether the Registry stores this session: its QoS 1/2 deliveries carry packet ids
    /// from the Registry, and their acknowledgements are reported back.
    fn is_stored(&self) -> bool {
        self.session_expiry > 0
    }
}

/// Clients may not write the broker's own topics (§4.7.2), nor what their ACL forbids.
fn may_publish(acl: &Acl, topic: &str) -> bool {
    !topic.starts_with("$SYS") && acl.allows(AclAction::Publish, topic)
}

impl Session {
    /// Builds a session for an accepted connection from the two halves of its byte stream
    /// (plain TCP or TLS: the session does not know which); runs on the Arbiter that will own
    /// it. `cert_username` is the client certificate's identity on a listener with
    /// `identity_as_username`: it replaces the CONNECT username, and no password is checked.
    /// `socket` is the writing half of a plain TCP connection (see `bypass`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        reader: BoxedRead,
        writer: BoxedWrite,
        peer: SocketAddr,
        conn_id: u64,
        slot: ConnectionSlot,
        shared: Arc<Shared>,
        cert_username: Option<String>,
        socket: Option<Weak<OwnedWriteHalf>>,
    ) -> Session {
        let abort = Arc::new(Abort::default());
        let watch = Rc::new(WriteWatch::default());
        let writer = SendTimeout::new(
            writer,
            shared.config.send_timeout(),
            abort.clone(),
            watch.clone(),
        );
        let connect_timeout = shared.config.connect_timeout();
        Session {
            conn_id,
            peer,
            shared,
            _slot: slot,
            writer: Writer::Unopened(Some(writer)),
            reader: Some(reader),
            abort,
            cert_username,
            phase: Phase::AwaitingConnect,
            client: None,
            deliveries: None,
            queue_opened: false,
            pumping: false,
            acks: VecDeque::new(),
            pending: VecDeque::new(),
            silence_limit: Rc::new(Cell::new(Some(connect_timeout))),
            end_reason: "connection closed".into(),
            connect_id: None,
            inflight_gauge: Arc::default(),
            in_registry: None,
            routes: None,
            gate: Rc::default(),
            holds: 0,
            held: None,
            socket,
            bypass: None,
            watch,
        }
    }

    /// Creates the delivery queue, once, and returns its sending end (with the bypass of a
    /// plain TCP connection) for the Registry. Not done at CONNECT for a clean session (see
    /// `messages::Register`).
    fn open_queue(&mut self) -> Option<Outlet> {
        if self.queue_opened {
            return None;
        }
        self.queue_opened = true;
        let (queue, receiver) = mpsc::channel(self.shared.config.limits.max_queued_messages);
        self.deliveries = Some(receiver);
        // Topic aliases are the session's state: a client that takes them gets them.
        self.bypass = match (self.socket.take(), &self.client) {
            (Some(socket), Some(client)) if client.topic_alias_maximum == 0 => {
                Some(Arc::new(Bypass::new(
                    socket,
                    client.protocol,
                    client.maximum_packet_size,
                    client.acl.allows_everything(),
                )))
            }
            _ => None,
        };
        Some(Outlet {
            queue,
            bypass: self.bypass.clone(),
        })
    }

    /// Queues a packet. Before CONNECT nothing can be written, and nothing needs to be.
    fn send(&mut self, packet: Packet) {
        self.write(Frame::Packet(packet));
    }

    fn write(&mut self, item: Frame<AppMessage>) {
        if let Writer::Open(w) = &mut self.writer {
            // Publishers' threads must not write past what this session writes; the end of a
            // packet one of them began goes first.
            if let Some(residue) = self.bypass.as_ref().and_then(|b| b.shut()) {
                w.write(Frame::Raw(residue));
            }
            w.write(item);
        }
    }

    /// Opens the writer in the protocol version of the CONNECT being handled. The client's
    /// Maximum Packet Size is enforced per delivery (see `deliver`), not by the codec, so an
    /// oversized message is skipped rather than ending the connection.
    fn open_writer(&mut self, version: ProtocolVersion, ctx: &mut Context<Self>) {
        if let Writer::Unopened(io) = &mut self.writer
            && let Some(io) = io.take()
        {
            let codec = CountingCodec {
                codec: MqttCodec::new(version, self.shared.config.limits.max_packet_size),
                watch: self.watch.clone(),
            };
            self.writer = Writer::Open(FramedWrite::new(io, codec, ctx));
        }
    }

    /// Ends the connection: flush what is queued, then stop (see `WriteHandler::finished`).
    /// Stopping the context directly would drop the last packet unsent (gotchas item 4).
    fn close(&mut self, ctx: &mut Context<Self>) {
        if self.phase == Phase::Closing {
            return;
        }
        self.phase = Phase::Closing;
        if let Some(bypass) = &self.bypass {
            bypass.end();
        }
        match &mut self.writer {
            Writer::Open(w) => {
                w.close();
                // A peer that never reads would keep the flush, and the socket, forever.
                ctx.run_later(CLOSE_FLUSH_TIMEOUT, |_, ctx| ctx.stop());
            }
            Writer::Unopened(_) => ctx.stop(),
        }
    }

    /// The one place where an error becomes a reply: a CONNACK with the reason code while
    /// CONNECT is being handled, a DISCONNECT once connected (v5 only; 3.1.1 has no server
    /// DISCONNECT), nothing before CONNECT [MQTT-3.14.0-1]; then the connection is closed.
    fn fail(&mut self, err: SessionError, ctx: &mut Context<Self>) {
        let reason = err.reason_code();
        match (self.phase, &err) {
            (Phase::Closing, _) => return,
            (
                Phase::AwaitingConnect,
                SessionError::Decode(DecodeError::InConnect { version, .. }),
            ) => {
                let version = *version;
                self.open_writer(version, ctx);
                self.refuse(version, reason);
            }
            (Phase::Connecting(version), _) => self.refuse(version, reason),
            (Phase::Connected, _) => {
                if self.client.as_ref().is_some_and(|c| c.protocol.is_v5()) {
                    self.send(Packet::Disconnect(Disconnect {
                        reason,
                        ..Default::default()
                    }));
                }
            }
            (Phase::AwaitingConnect, _) => {}
        }
        // One info line per connection event: a refused CONNECT is logged here; the end of an
        // accepted connection is logged once in `stopped`, with this as its reason.
        let refused = !self.client.as_ref().is_some_and(|c| c.accepted);
        match &err {
            SessionError::Decode(DecodeError::Io(e)) => debug!("{}: read error: {e}", self.peer),
            _ if refused && self.phase != Phase::AwaitingConnect => {
                let id = self
                    .client
                    .as_ref()
                    .map(|c| c.client_id.to_string())
                    .or_else(|| self.connect_id.as_deref().map(str::to_owned))
                    .unwrap_or_default();
                info!(
                    "client {id:?} ({}): CONNECT refused: {err} -> {reason:?} ({:#04x})",
                    self.peer, reason as u8
                );
            }
            _ if refused => info!(
                "{}: CONNECT refused: {err} -> {reason:?} ({:#04x})",
                self.peer, reason as u8
            ),
            _ => debug!("{}: {err} -> {reason:?} ({:#04x})", self.peer, reason as u8),
        }
        self.end_reason = if refused {
            err.to_string().into()
        } else {
            format!("{err} -> {reason:?} ({:#04x})", reason as u8).into()
        };
        self.close(ctx);
    }

    /// The disconnect to record, once: `None` if the connect was never recorded or the
    /// disconnect already was.
    fn take_disconnect_record(&mut self) -> Option<RecordDisconnect> {
        let client = self.client.as_mut().filter(|c| c.recorded)?;
        client.recorded = false;
        Some(RecordDisconnect {
            client_id: client.client_id.to_string(),
            connection_id: self.conn_id as i64,
            at_ms: unix_millis(),
            reason: self.end_reason.to_string(),
        })
    }

    /// Sends a refusing CONNACK. 3.1.1 has return codes for only a few refusals; for anything
    /// else (such as a malformed CONNECT) the connection is just closed.
    fn refuse(&mut self, version: ProtocolVersion, reason: ReasonCode) {
        use ReasonCode::*;
        let v3_has_code = matches!(
            reason,
            UnsupportedProtocolVersion
                | ClientIdentifierNotValid
                | ServerUnavailable
                | ServerBusy
                | BadUserNameOrPassword
                | NotAuthorized
        );
        if version.is_v5() || v3_has_code {
            self.send(Packet::ConnAck(ConnAck {
                reason,
                ..Default::default()
            }));
        }
    }

    /// Bounds the User Properties of one packet (bad-inputs.md B36).
    fn check_user_properties(&self, packet: &Packet) -> Result<(), SessionError> {
        let max = self.shared.config.limits.max_user_properties;
        let count = user_property_count(packet);
        if count > max {
            return Err(SessionError::TooManyUserProperties(count, max));
        }
        Ok(())
    }

    /// The single dispatch of inbound packets (after CONNECT handling has started).
    fn dispatch(&mut self, packet: Packet, ctx: &mut Context<Self>) -> Result<(), SessionError> {
        match packet {
            Packet::Connect(connect) => {
                Counters::add(&self.shared.counters.connects_received);
                if self.phase == Phase::AwaitingConnect {
                    self.connect_id = Some(connect.client_id.as_str().into());
                }
                self.on_connect(*connect, ctx)
            }
            Packet::Publish(publish) => self.on_publish(*publish, ctx),
            Packet::PubRel(ack) => self.on_pubrel(ack, ctx),
            Packet::PubAck(ack) => self.on_puback(ack, ctx),
            Packet::PubRec(ack) => self.on_pubrec(ack, ctx),
            Packet::PubComp(ack) => self.on_pubcomp(ack, ctx),
            Packet::Subscribe(subscribe) => self.on_subscribe(subscribe, ctx),
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(unsubscribe, ctx),
            Packet::PingReq => {
                self.send(Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(disconnect) => self.on_disconnect(disconnect, ctx),
            Packet::Auth(_) => Err(SessionError::UnexpectedAuth),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(SessionError::ServerOnlyPacket(packet.name()))
            }
        }
    }

    /// Client DISCONNECT (§3.14): the server closes without replying.
    fn on_disconnect(
        &mut self,
        disconnect: Disconnect,
        ctx: &mut Context<Self>,
    ) -> Result<(), SessionError> {
        let session_expiry = self.client.as_ref().map_or(0, |c| c.session_expiry);
        if session_expiry == 0
            && disconnect
                .properties
                .session_expiry_interval
                .is_some_and(|s| s != 0)
        {
            return Err(SessionError::SessionExpiryAfterZero);
        }
        let max_expiry = self.shared.config.limits.max_session_expiry;
        if let Some(client) = self.client.as_mut() {
            if let Some(expiry) = disconnect.properties.session_expiry_interval {
                client.session_expiry = expiry.min(max_expiry);
            }
            if disconnect.reason == ReasonCode::Success {
                // [MQTT-3.1.2-10]: a normal disconnection discards the Will.
                client.will = None;
            }
        }
        self.end_reason = format!("client disconnect ({:#04x})", disconnect.reason as u8).into();
        self.close(ctx);
        Ok(())
    }

    /// The client said nothing within the limit set in `silence_limit`.
    fn on_silence(&mut self, ctx: &mut Context<Self>) {
        match (self.phase, &self.client) {
            (Phase::AwaitingConnect, _) => {
                debug!("{}: no CONNECT within the connect timeout", self.peer);
                self.end_reason = "connect timeout".into();
                self.close(ctx);
            }
            (Phase::Connected, Some(client)) => {
                let keep_alive = client.keep_alive;
                self.fail(SessionError::KeepAliveTimeout(keep_alive), ctx);
            }
            _ => {}
        }
    }
}

/// User Properties of a CONNECT and its Will.
fn connect_user_properties(connect: &Connect) -> usize {
    let will = connect
        .will
        .as_ref()
        .map_or(0, |w| w.properties.user_properties.len());
    connect.properties.user_properties.len() + will
}

/// User Properties in a packet, Will Properties included.
fn user_property_count(packet: &Packet) -> usize {
    let properties = match packet {
        Packet::Connect(c) => {
            let will = c
                .will
                .as_ref()
                .map_or(0, |w| w.properties.user_properties.len());
            return c.properties.user_properties.len() + will;
        }
        Packet::Publish(p) => &p.properties,
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            &a.properties
        }
        Packet::Subscribe(s) => &s.properties,
        Packet::Unsubscribe(u) => &u.properties,
        Packet::Disconnect(d) => &d.properties,
        Packet::Auth(a) => &a.properties,
        Packet::ConnAck(_)
        | Packet::SubAck(_)
        | Packet::UnsubAck(_)
        | Packet::PingReq
        | Packet::PingResp => return 0,
    };
    properties.user_properties.len()
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(reader) = self.reader.take() {
            let codec = MqttCodec::server(self.shared.config.limits.max_packet_size);
            let reader: BoxedRead = Box::new(Gated::new(reader, self.gate.clone()));
            ctx.add_stream(PacketStream::new(reader, codec, self.silence_limit.clone()));
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(bypass) = &self.bypass {
            bypass.end();
        }
        // A persistent session's Will with a delay waits in the Registry (§3.1.2.5).
        let delayed_will = if self.will_waits() {
            self.take_will()
        } else {
            None
        };
        if let Some(will) = self.will_due_now(false) {
            // The actor is gone; the publication finishes on this Arbiter by itself. One per
            // connection end, so these tasks are bounded by the connections.
            actix::spawn(self.will_publication(will));
        }
        let Some(client) = &self.client else { return };
        if client.accepted {
            info!(
                "client {:?} ({}): disconnected: {}",
                client.client_id, self.peer, self.end_reason
            );
        } else {
            // A refused CONNECT was logged by `fail`.
            debug!(
                "client {:?} ({}): ended before CONNACK: {}",
                client.client_id, self.peer, self.end_reason
            );
        }
        // One per connection, so this `do_send` is bounded by the connections.
        self.shared.registry.do_send(Unregister {
            client_id: client.client_id.clone(),
            conn_id: self.conn_id,
            expiry_interval: client.session_expiry,
            delayed_will,
        });
        if let Some(record) = self.take_disconnect_record() {
            // One message per connection, so this `do_send` cannot pile up beyond the number
            // of connections.
            self.shared.connection_log.do_send(record);
        }
    }
}

impl Session {
    /// Stops handling packets (and reading) until as many `release_hold` calls.
    fn hold(&mut self) {
        self.holds += 1;
        self.gate.close();
    }

    /// Ends one hold; after the last, handles the packets held meanwhile and reads again.
    fn release_hold(&mut self, ctx: &mut Context<Self>) {
        self.holds -= 1;
        while self.holds == 0
            && let Some(item) = self.held.as_mut().and_then(|held| held.pop_front())
        {
            self.handle_packet(item, ctx);
        }
        if self.holds == 0 {
            self.gate.open();
        }
    }

    fn handle_packet(&mut self, item: Result<Packet, DecodeError>, ctx: &mut Context<Self>) {
        if self.phase == Phase::Closing {
            return;
        }
        let result = item.map_err(SessionError::from).and_then(|p| {
            // CONNECT is checked once its version is known, so the refusal is a CONNACK.
            if !matches!(p, Packet::Connect(_)) {
                self.check_user_properties(&p)?;
            }
            self.dispatch(p, ctx)
        });
        if let Err(err) = result {
            self.fail(err, ctx);
        }
    }
}

impl StreamHandler<Result<Inbound, DecodeError>> for Session {
    fn handle(&mut self, item: Result<Inbound, DecodeError>, ctx: &mut Context<Self>) {
        let item = match item {
            Ok(Inbound::Silence) => return self.on_silence(ctx),
            Ok(Inbound::Packet(packet)) => Ok(packet),
            Err(e) => Err(e),
        };
        if self.holds > 0 {
            self.held.get_or_insert_default().push_back(item);
            return;
        }
        self.handle_packet(item, ctx);
    }

    /// The peer closed its side (or the codec gave up): flush, then stop.
    fn finished(&mut self, ctx: &mut Context<Self>) {
        if self.phase == Phase::Connected {
            self.end_reason = "connection closed by client".into();
        }
        self.close(ctx);
    }
}

impl WriteHandler<EncodeError> for Session {
    fn error(&mut self, err: EncodeError, _: &mut Context<Self>) -> Running {
        if matches!(&err, EncodeError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionAborted) {
            // Taken over while paused on a client that does not read (see `Abort`): nothing
            // more can be written to it. The Will goes to the Registry now, ahead of anything
            // from the connection that took over.
            self.end_reason = "taken over (the client was not reading)".into();
            if let Some(will) = self.will_due_now(true) {
                actix::spawn(self.will_publication(will));
            }
            return Running::Stop;
        }
        // A client that went away with data still owed to it is normal, not worth a warning.
        let gone = matches!(&err, EncodeError::Io(e) if matches!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ));
        if gone {
            debug!("{}: write failed: {err}", self.peer);
        } else {
            warn!("{}: write failed: {err}", self.peer);
        }
        self.end_reason = format!("write failed: {err}").into();
        Running::Stop
    }
}

impl Handler<Close> for Session {
    type Result = ResponseFuture<()>;

    /// Replies only once the end of this connection is committed, so that on take-over the
    /// new connection is recorded after the old one ended.
    fn handle(&mut self, msg: Close, ctx: &mut Context<Self>) -> Self::Result {
        if self.phase != Phase::Connected {
            return Box::pin(async {});
        }
        if self.client.as_ref().is_some_and(|c| c.protocol.is_v5()) {
            self.send(Packet::Disconnect(Disconnect {
                reason: msg.reason,
                ..Default::default()
            }));
        }
        self.end_reason = match msg.reason {
            ReasonCode::SessionTakenOver => "taken over".into(),
            ReasonCode::ServerShuttingDown => "server shutdown".into(),
            ReasonCode::AdministrativeAction => "kicked by an administrator (0x98)".into(),
            other => format!("closed by server ({:#04x})", other as u8).into(),
        };
        self.close(ctx);
        // On take-over the Will of the old connection is published before the new connection
        // is accepted [MQTT-3.1.4-3], so the Will cannot overtake what the new one publishes.
        let will = self
            .will_due_now(msg.reason == ReasonCode::SessionTakenOver)
            .map(|w| self.will_publication(w));
        let record = self.take_disconnect_record();
        let log = self.shared.connection_log.clone();
        Box::pin(async move {
            if let Some(will) = will {
                will.await;
            }
            if let Some(record) = record {
                let _ = log.send(record).await;
            }
        })
    }
}

impl Handler<RefreshAcl> for Session {
    type Result = ResponseActFuture<Self, AclRefreshed>;

    /// Loads this connection's rules again and swaps them in once they arrive. The future is
    /// spawned, not waited for: packets and deliveries keep flowing under the old rules until
    /// then. A delivery still in `pending` or the queue is checked when it is written, so it
    /// already meets the new rules; one written to the socket before cannot be recalled.
    fn handle(&mut self, _: RefreshAcl, _: &mut Context<Self>) -> Self::Result {
        let Some(client) = self
            .client
            .as_ref()
            .filter(|_| self.phase == Phase::Connected)
        else {
            return Box::pin(fut::ready(AclRefreshed::NotConnected));
        };
        let load = self.shared.db.send(LoadAcl {
            username: client.username.clone(),
            client_id: client.client_id.to_string(),
        });
        Box::pin(load.into_actor(self).map(|result, act, _| {
            let default_allow = act.shared.config.acl_default == AclDefault::Allow;
            let Some(client) = act.client.as_mut() else {
                return AclRefreshed::NotConnected;
            };
            // Logged once for all sessions by `Broker::reload_acl`, with the first error.
            let rules = match result {
                Ok(Ok(rules)) => rules,
                Ok(Err(e)) => {
                    debug!("client {:?}: ACL reload failed: {e}", client.client_id);
                    return AclRefreshed::Failed(e.to_string());
                }
                Err(e) => {
                    debug!("client {:?}: ACL reload failed: {e}", client.client_id);
                    return AclRefreshed::Failed(format!("database actor unavailable: {e}"));
                }
            };
            client.acl = Acl::new(
                rules,
                client.username.as_deref(),
                &client.client_id,
                default_allow,
            );
            if let Some(bypass) = &act.bypass {
                bypass.set_allowed(client.acl.allows_everything());
            }
            debug!("client {:?}: ACL rules reloaded", client.client_id);
            AclRefreshed::Reloaded
        }))
    }
}
