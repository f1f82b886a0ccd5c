//! The session's inbound stream: the packets decoded from the socket, the deadline for the
//! next one (connect timeout, then keep-alive), and a read buffer that exists only while bytes
//! are being read.
//!
//! Keep-alive (§3.1.2.10): a client silent for 1.5 x Keep Alive is disconnected
//! [MQTT-3.1.2-22]. The deadline is kept here rather than in a timer future of its own: an
//! idle session then has three futures in its actix context (this stream, the writer, the
//! delivery pump), which fit in the context's inline storage, where a fourth moved them all to
//! the heap. The timer is re-armed for the time left when it fires, not moved per packet.
//!
//! The read buffer is freed whenever everything read has been decoded, so an idle connection
//! holds none, and one that once received a large packet does not keep a large buffer. The
//! next read allocates `READ_BUFFER` again (8 KB for a connection whose last read held several
//! packets, see `MqttCodec::read_buffer_size`), which malloc serves from its per-thread cache.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};
use tokio_util::codec::FramedRead;

use super::BoxedRead;
use crate::mqtt::{DecodeError, MqttCodec, Packet};

/// Capacity of the read buffer while bytes are being read: most packets are smaller, and the
/// codec reserves room for a larger one once its header has arrived.
pub(super) const READ_BUFFER: usize = 512;

/// What the session's stream yields.
pub(super) enum Inbound {
    Packet(Packet),
    /// No packet arrived within the limit the session set (see `PacketStream::new`); reported
    /// once, after which there is no limit until the session sets one again.
    Silence,
}

pub(super) struct PacketStream {
    framed: FramedRead<BoxedRead, MqttCodec>,
    /// How long the peer may stay silent now; `None`: no limit. Set by the session.
    limit: Rc<Cell<Option<Duration>>>,
    /// The limit the timer was armed for.
    armed: Option<Duration>,
    timer: Pin<Box<Sleep>>,
    /// When the last packet arrived, or the stream was created.
    last_packet: Instant,
    /// Packets arrived since `last_packet` was set: it is set once the socket has nothing
    /// more, one clock read per read rather than per packet.
    arrived: bool,
}

impl PacketStream {
    /// Packets from `reader`. `limit` is shared with the session, which sets it: the peer may
    /// be silent that long (counted from the last packet, or from now for the first).
    pub(super) fn new(
        reader: BoxedRead,
        codec: MqttCodec,
        limit: Rc<Cell<Option<Duration>>>,
    ) -> PacketStream {
        let now = Instant::now();
        PacketStream {
            framed: FramedRead::with_capacity(reader, codec, READ_BUFFER),
            limit,
            armed: None,
            timer: Box::pin(tokio::time::sleep_until(now)),
            last_packet: now,
            arrived: false,
        }
    }

    fn poll_deadline(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Inbound, DecodeError>>> {
        let Some(limit) = self.limit.get() else {
            self.armed = None;
            return Poll::Pending;
        };
        if self.armed != Some(limit) {
            self.armed = Some(limit);
            self.timer.as_mut().reset(self.last_packet + limit);
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            let deadline = self.last_packet + limit;
            if deadline <= Instant::now() {
                self.limit.set(None);
                self.armed = None;
                return Poll::Ready(Some(Ok(Inbound::Silence)));
            }
            self.timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }

    #[cfg(test)]
    fn buffer_capacity(&self) -> usize {
        self.framed.read_buffer().capacity()
    }
}

impl Stream for PacketStream {
    type Item = Result<Inbound, DecodeError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.framed.read_buffer().capacity() == 0 {
            let size = this.framed.decoder().read_buffer_size(READ_BUFFER);
            this.framed.read_buffer_mut().reserve(size);
        }
        match Pin::new(&mut this.framed).poll_next(cx) {
            Poll::Ready(Some(Ok(packet))) => {
                this.arrived = true;
                return Poll::Ready(Some(Ok(Inbound::Packet(packet))));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if std::mem::take(&mut this.arrived) {
            this.last_packet = Instant::now();
        }
        if this.framed.read_buffer().is_empty() {
            // Everything read is decoded; the socket has this task's waker, so the buffer is
            // allocated again only when bytes arrive.
            *this.framed.read_buffer_mut() = BytesMut::new();
        }
        this.poll_deadline(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;

    fn stream(limit: Option<Duration>) -> (PacketStream, tokio::io::DuplexStream) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let limit = Rc::new(Cell::new(limit));
        let codec = MqttCodec::server(1 << 20);
        (PacketStream::new(Box::new(server), codec, limit), client)
    }

    /// A v5 CONNECT with client id "c".
    const CONNECT: &[u8] = &[
        0x10, 0x0e, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3c, 0x00, 0x00, 0x01,
        b'c',
    ];

    #[tokio::test]
    async fn the_read_buffer_is_freed_while_idle_and_after_a_large_packet() {
        let (mut packets, mut client) = stream(None);
        client.write_all(CONNECT).await.unwrap();
        assert!(matches!(
            packets.next().await,
            Some(Ok(Inbound::Packet(Packet::Connect(_))))
        ));
        // Nothing more to read: the next poll finds the socket empty and frees the buffer.
        assert!(futures_util::poll!(packets.next()).is_pending());
        assert_eq!(packets.buffer_capacity(), 0);

        // A 100 kB PUBLISH makes the buffer grow to hold it; once decoded, it goes.
        // Remaining length 100,004 (VBI a4 8d 06): topic "t", no properties, 100,000 bytes.
        let mut publish = vec![0x30, 0xa4, 0x8d, 0x06, 0x00, 0x01, b't', 0x00];
        publish.resize(4 + 100_004, b'x');
        client.write_all(&publish).await.unwrap();
        client.write_all(&[0xc0, 0x00]).await.unwrap();
        assert!(matches!(
            packets.next().await,
            Some(Ok(Inbound::Packet(Packet::Publish(_))))
        ));
        assert!(matches!(
            packets.next().await,
            Some(Ok(Inbound::Packet(Packet::PingReq)))
        ));
        assert!(futures_util::poll!(packets.next()).is_pending());
        assert_eq!(packets.buffer_capacity(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_reported_once_after_the_limit_since_the_last_packet() {
        let (mut packets, mut client) = stream(Some(Duration::from_secs(10)));
        let started = Instant::now();
        // Arms the timer for 10 s.
        assert!(futures_util::poll!(packets.next()).is_pending());
        tokio::time::sleep(Duration::from_secs(6)).await;
        client.write_all(CONNECT).await.unwrap();
        assert!(matches!(
            packets.next().await,
            Some(Ok(Inbound::Packet(Packet::Connect(_))))
        ));
        // The timer first fires at 10 s, finds a packet at 6 s, and waits until 16 s.
        assert!(matches!(packets.next().await, Some(Ok(Inbound::Silence))));
        assert_eq!(started.elapsed(), Duration::from_secs(16));
        assert_eq!(packets.limit.get(), None);
        let more = tokio::time::timeout(Duration::from_secs(60), packets.next()).await;
        assert!(more.is_err(), "reported once");
    }
}
