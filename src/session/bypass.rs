//! Direct delivery: the publisher's thread writes a message to an idle subscriber's socket
//! itself.
//!
//! Sessions live on several Arbiters. A message from a publisher on one to a subscriber on
//! another is handed between threads, and at low load the subscriber's thread sleeps: waking it
//! on its idle vCPU cost 56-58 µs on the benchmark machine, most of the latency gap to a
//! single-threaded broker (docs/performance.md). So while a plain-TCP subscriber's session is
//! idle, its `Bypass` is open, and the publisher's thread writes the PUBLISH to the socket
//! without blocking instead of queueing it.
//!
//! Order per publisher and subscriber [MQTT-4.6.0-6] holds because, under the bypass lock:
//! - a publisher writes only while the bypass is open and the subscriber's queue is empty;
//! - the session opens it only while its pump waits on an empty queue with nothing of its own
//!   unwritten (`WriteWatch`: every byte it encoded has reached the socket);
//! - taking a delivery from the queue shuts it, and so does every write of the session.
//!
//! Only a subscriber whose Arbiter thread has slept for `ASLEEP_BEFORE_DIRECT` is written to
//! directly, and at most `DIRECT_BURST` messages at a time, one more every `DIRECT_REFILL`: a
//! thread that is awake, or only just parked, costs little to hand a delivery to, and a session
//! writes its deliveries in batches, many per system call, where a publisher's thread writes one
//! per call. With every delivery direct, fan-out QoS 0 fell from 3.2M to 0.46M msg/s; with
//! direct writes to any parked thread, by 7 %. The limit stops a flood after a quiet spell from
//! going direct for good (nothing would wake the sleeping thread).
//!
//! So whatever was queued before a direct write is written before it, and whatever the session
//! writes afterwards follows it. A publisher that can write only part of a packet leaves the
//! rest (`residue`) to the session, which writes it before anything else. Only what needs no
//! other session state goes this way: a client whose ACL allows every topic and that takes no
//! topic aliases; at QoS 1/2, a clean session (a persistent one's are journalled by the
//! Registry first), with a packet id the session lent its bypass. The session takes the ids
//! used into its in-flight map before it handles any acknowledgement.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::codec::Encoder;

use crate::message::{AppMessage, Delivery};
use crate::mqtt::{EncodeError, Frame, MqttCodec, OutPublish, ProtocolVersion, QoS};
use crate::registry::subscriptions::Route;
use crate::stats::Counters;

/// Packet ids a session lends its bypass for QoS 1/2 direct writes, at most: its Receive
/// Maximum allowing, an eighth of it.
pub const LENT_IDS: usize = 4;

/// Direct writes a subscriber can take back to back (a publisher's burst of a few messages).
const DIRECT_BURST: u32 = 4;
/// How often a subscriber earns one more direct write: at most 5,000 a second, a rate at which
/// its thread's wake-ups cost less than the system calls of unbatched writes.
const DIRECT_REFILL: Duration = Duration::from_micros(200);

/// How long a subscriber's thread must have been parked before a delivery goes direct: by
/// then its vCPU has likely stopped polling and halted (the haltpoll guest default polls for
/// up to 200 µs), and waking it is what costs. At 100 µs, fan-out QoS 0 still made a few
/// thousand direct writes a second, from the publisher's busy thread.
const ASLEEP_BEFORE_DIRECT: Duration = Duration::from_micros(300);

/// Since when an Arbiter's thread is parked (see `thread_parks`).
#[derive(Debug, Default)]
pub struct ThreadState {
    /// `since_epoch()` at the park, plus one; 0 while the thread runs.
    parked_at: AtomicU64,
}

impl ThreadState {
    fn asleep_for(&self, at_least: Duration, direct: &mut DirectWrites) -> bool {
        let parked_at = self.parked_at.load(Ordering::Acquire);
        parked_at != 0 && direct.now().saturating_sub(parked_at - 1) >= nanos(at_least)
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// What the direct writes of one message share: the counters, and the time, read once (a
/// clock read per delivery was 7 % of fan-out's CPU).
pub struct DirectWrites<'a> {
    counters: &'a Counters,
    now: Option<u64>,
}

impl<'a> DirectWrites<'a> {
    pub fn new(counters: &'a Counters) -> DirectWrites<'a> {
        DirectWrites {
            counters,
            now: None,
        }
    }

    fn now(&mut self) -> u64 {
        *self.now.get_or_insert_with(since_epoch)
    }
}

thread_local! {
    static THREAD: Arc<ThreadState> = Arc::default();
}

/// Nanoseconds since the first call: the clock of `ThreadState` and the direct-write budget.
fn since_epoch() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    nanos(EPOCH.get_or_init(Instant::now).elapsed())
}

/// The session Arbiters' park and unpark hooks (see `ASLEEP_BEFORE_DIRECT`).
pub fn thread_parks(parked: bool) {
    let parked_at = if parked { since_epoch() + 1 } else { 0 };
    THREAD.with(|t| t.parked_at.store(parked_at, Ordering::Release));
}

/// A subscriber's socket, open to publishers' threads while its session is idle.
pub struct Bypass {
    /// `State::open`, readable without the lock: most deliveries to a busy subscriber find the
    /// bypass shut and go on to its queue.
    open: AtomicBool,
    /// `State::residue` is set; set before `open` is cleared.
    residue_left: AtomicBool,
    /// `State::used` is not empty.
    used_any: AtomicBool,
    state: Mutex<State>,
    /// Weak: a publisher's route cache must not keep a closed connection's socket open.
    socket: Weak<OwnedWriteHalf>,
    /// The thread of the session's Arbiter.
    thread: Arc<ThreadState>,
    protocol: ProtocolVersion,
    maximum_packet_size: Option<u32>,
}

impl std::fmt::Debug for Bypass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bypass")
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

struct State {
    open: bool,
    /// The client may receive every topic (no ACL rule applies to it, default allow).
    allowed: bool,
    /// The session has ended: the bypass stays shut.
    ended: bool,
    codec: MqttCodec,
    /// The unsent end of a packet a publisher could write only in part.
    residue: Option<Bytes>,
    /// The session's pump, to wake when a residue is left.
    pump: Option<Waker>,
    /// Free packet ids the session lent for QoS 1/2 direct writes (see `Session::lend_ids`).
    lent: Vec<u16>,
    /// Lent ids used, with the QoS they were sent at, for the session to take in flight.
    used: Vec<(u16, QoS)>,
    /// Direct writes left in the current burst (see `DIRECT_BURST`).
    tokens: u32,
    /// When `tokens` was last topped up (see `since_epoch`).
    refilled: u64,
}

impl State {
    /// Takes one direct write, if one is left after topping up for the time since the last.
    fn take_token(&mut self, now: u64) -> bool {
        let earned = now.saturating_sub(self.refilled) / nanos(DIRECT_REFILL);
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(DIRECT_BURST);
            self.tokens = self.tokens.saturating_add(earned).min(DIRECT_BURST);
            self.refilled = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// What the pump takes next.
pub enum Pumped {
    /// A delivery from the queue; `None` once every sender is gone.
    Delivery(Option<Delivery>),
    /// A residue to write before anything else.
    Residue(Bytes),
}

impl Bypass {
    pub fn new(
        socket: Weak<OwnedWriteHalf>,
        protocol: ProtocolVersion,
        maximum_packet_size: Option<u32>,
        allowed: bool,
    ) -> Bypass {
        Bypass {
            open: AtomicBool::new(false),
            residue_left: AtomicBool::new(false),
            used_any: AtomicBool::new(false),
            state: Mutex::new(State {
                open: false,
                allowed,
                ended: false,
                codec: MqttCodec::new(protocol, u32::MAX),
                residue: None,
                pump: None,
                lent: Vec::new(),
                used: Vec::new(),
                tokens: DIRECT_BURST,
                refilled: since_epoch(),
            }),
            socket,
            thread: THREAD.with(Arc::clone),
            protocol,
            maximum_packet_size,
        }
    }

    /// Nothing under it panics on purpose; were it poisoned, `State` is still whole.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_open(&self, state: &mut State, open: bool) {
        state.open = open;
        self.open.store(open, Ordering::Release);
    }

    fn take_residue(&self, state: &mut State) -> Option<Bytes> {
        self.residue_left.store(false, Ordering::Release);
        state.residue.take()
    }

    /// The session is about to write: publishers queue from now on. Returns the residue,
    /// which must be written first. Only the session's thread opens the bypass, so it cannot
    /// miss an opening here; a residue is flagged before the opening it ends is undone.
    pub fn shut(&self) -> Option<Bytes> {
        if !self.open.load(Ordering::Acquire) && !self.residue_left.load(Ordering::Acquire) {
            return None;
        }
        let mut state = self.lock();
        self.set_open(&mut state, false);
        self.take_residue(&mut state)
    }

    /// The session ends: the bypass never opens again.
    pub fn end(&self) {
        let mut state = self.lock();
        state.ended = true;
        state.pump = None;
        self.set_open(&mut state, false);
        self.take_residue(&mut state);
    }

    /// Lends free packet ids (already marked in the session's in-flight map).
    pub fn lend(&self, ids: impl IntoIterator<Item = u16>) {
        self.lock().lent.extend(ids);
    }

    /// Moves the lent ids used since the last call to `out`.
    pub fn take_used(&self, out: &mut Vec<(u16, QoS)>) {
        // Loaded first: a swap on every acknowledgement would write the cache line that
        // publishers' threads read for `open`.
        if self.used_any.load(Ordering::Acquire) && self.used_any.swap(false, Ordering::AcqRel) {
            out.append(&mut self.lock().used);
        }
    }

    /// The client's ACL changed: whether it still allows every topic.
    pub fn set_allowed(&self, allowed: bool) {
        let mut state = self.lock();
        state.allowed = allowed;
        if !allowed {
            self.set_open(&mut state, false);
        }
    }

    /// The pump's wait: the next delivery or residue; meanwhile, the bypass is open whenever
    /// `watch` says the session has nothing unwritten.
    pub fn poll_next(
        &self,
        queue: &mut mpsc::Receiver<Delivery>,
        watch: &WriteWatch,
        cx: &mut Context<'_>,
    ) -> Poll<Pumped> {
        let mut state = self.lock();
        if let Some(residue) = self.take_residue(&mut state) {
            return Poll::Ready(Pumped::Residue(residue));
        }
        if let Poll::Ready(next) = queue.poll_recv(cx) {
            // Under the lock: no publisher writes past a delivery taken but not yet written.
            self.set_open(&mut state, false);
            return Poll::Ready(Pumped::Delivery(next));
        }
        if !state.pump.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            state.pump = Some(cx.waker().clone());
        }
        if !state.open && state.allowed && !state.ended {
            if watch.is_flushed() {
                self.set_open(&mut state, true);
            } else {
                watch.wake_when_flushed(cx.waker());
            }
        }
        Poll::Pending
    }

    /// Writes `message`'s delivery along `route` to the socket if the bypass is open and the
    /// queue empty; false if it must be queued instead. A delivery the session would skip (over
    /// the client's Maximum Packet Size) is dropped here, counted the same way.
    pub fn deliver(
        &self,
        route: &Route,
        message: &Arc<AppMessage>,
        queue: &mpsc::Sender<Delivery>,
        direct: &mut DirectWrites,
    ) -> bool {
        if !self.open.load(Ordering::Acquire)
            || !self.thread.asleep_for(ASLEEP_BEFORE_DIRECT, direct)
        {
            return false;
        }
        // An expiring message is the Registry's, which counts it if it expires (see
        // `Session::route_and_acknowledge`); none comes this way, and none may.
        if message.expires_at_ms.is_some() {
            return false;
        }
        let mut state = self.lock();
        if !state.open || queue.capacity() < queue.max_capacity() || !state.take_token(direct.now())
        {
            return false;
        }
        let counters = direct.counters;
        let qos = message.qos.min(route.qos);
        let Some(socket) = self.socket.upgrade() else {
            return false;
        };
        let mut publish = OutPublish {
            dup: false,
            qos,
            retain: message.retain && route.retain_as_published,
            // Sized with an id; the id itself is taken once the delivery is sure to be written.
            packet_id: (qos != QoS::AtMostOnce).then_some(0),
            topic_alias: None,
            send_topic: true,
            message_expiry_interval: None,
            subscription_identifiers: route.subscription_ids.clone(),
            message: message.clone(),
        };
        let size = publish.encoded_len(self.protocol);
        if self
            .maximum_packet_size
            .is_some_and(|max| size > max as usize)
        {
            Counters::add(&counters.dropped_too_large);
            return true;
        }
        if publish.packet_id.is_some() {
            let Some(id) = state.lent.pop() else {
                return false;
            };
            publish.packet_id = Some(id);
        }
        let packet_id = publish.packet_id;
        let mut packet = BytesMut::with_capacity(size);
        if state
            .codec
            .encode(Frame::Publish(publish), &mut packet)
            .is_err()
        {
            // The session meets the same error and ends the connection.
            state.lent.extend(packet_id);
            self.set_open(&mut state, false);
            return false;
        }
        if let Some(id) = packet_id {
            // Recorded before the write: the client's acknowledgement may reach the session
            // before this thread gets past the write.
            state.used.push((id, qos));
            self.used_any.store(true, Ordering::Release);
        }
        match socket.try_write(&packet) {
            Ok(n) if n == packet.len() => {}
            Ok(n) => {
                state.residue = Some(packet.split_off(n).freeze());
                self.residue_left.store(true, Ordering::Release);
                self.set_open(&mut state, false);
                if let Some(pump) = state.pump.take() {
                    pump.wake();
                }
            }
            // A full socket (or a failing one, which the session will meet): queue it.
            Err(_) => {
                if packet_id.is_some() {
                    // Ours is the last: the lock was held since it was pushed.
                    state.used.pop();
                }
                state.lent.extend(packet_id);
                self.set_open(&mut state, false);
                return false;
            }
        }
        counters.messages_direct.add();
        counters.messages_sent.add(qos);
        counters.bytes_sent.add_n(qos, message.payload.len());
        true
    }
}

/// Bytes a session has encoded and not yet handed to its socket. Shared by its encoder, which
/// adds, and its writer, which subtracts; on the session's thread only.
#[derive(Default)]
pub struct WriteWatch {
    unflushed: Cell<usize>,
    /// The pump, waiting for everything to be written before it opens the bypass.
    waiting: Cell<Option<Waker>>,
}

impl WriteWatch {
    fn encoded(&self, n: usize) {
        self.unflushed.set(self.unflushed.get() + n);
    }

    pub fn written(&self, n: usize) {
        let left = self.unflushed.get().saturating_sub(n);
        self.unflushed.set(left);
        if left == 0
            && let Some(waker) = self.waiting.take()
        {
            waker.wake();
        }
    }

    fn is_flushed(&self) -> bool {
        self.unflushed.get() == 0
    }

    fn wake_when_flushed(&self, waker: &Waker) {
        self.waiting.set(Some(waker.clone()));
    }
}

/// The session's encoder: the codec, counting what it encodes into `WriteWatch`.
pub struct CountingCodec {
    pub codec: MqttCodec,
    pub watch: Rc<WriteWatch>,
}

impl Encoder<Frame<AppMessage>> for CountingCodec {
    type Error = EncodeError;

    fn encode(&mut self, item: Frame<AppMessage>, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let before = dst.len();
        self.codec.encode(item, dst)?;
        self.watch.encoded(dst.len() - before);
        Ok(())
    }
}

/// The writing half of a plain TCP connection, shared with its `Bypass`.
pub struct TcpOut(pub Arc<OwnedWriteHalf>);

impl AsyncWrite for TcpOut {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.as_ref().as_ref().poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                // The readiness was stale; `try_write` cleared it, so the next poll waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = socket2::SockRef::from(self.0.as_ref().as_ref());
        Poll::Ready(socket.shutdown(std::net::Shutdown::Write))
    }
}
