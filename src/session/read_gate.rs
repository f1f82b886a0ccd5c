//! Pausing a session's reading without pausing the session.
//!
//! A publisher that must wait for room in a subscriber's queue (QoS 0, see
//! `Session::wait_for_room`) should stop reading its socket, so that TCP slows its client
//! down, while the session goes on writing its own deliveries and answering its mailbox: were
//! the whole actor paused, two sessions publishing to each other could each wait for the other.
//! The reader is wrapped in a `Gated` reader that returns `Pending` while the gate is closed;
//! the packets already read and decoded arrive anyway and are held by the session in order
//! (at most one read buffer's worth).

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, ReadBuf};

/// Shared by a session and its reader (both live on the session's Arbiter).
#[derive(Debug, Default)]
pub struct ReadGate {
    closed: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl ReadGate {
    pub fn close(&self) {
        self.closed.set(true);
    }

    pub fn open(&self) {
        self.closed.set(false);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }
}

/// A reader that reads only while its gate is open.
pub struct Gated<R> {
    inner: R,
    gate: Rc<ReadGate>,
}

impl<R> Gated<R> {
    pub fn new(inner: R, gate: Rc<ReadGate>) -> Gated<R> {
        Gated { inner, gate }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Gated<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.gate.is_closed() {
            *self.gate.waker.borrow_mut() = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn a_closed_gate_holds_reads_until_it_opens() {
        let gate = Rc::new(ReadGate::default());
        let mut reader = Gated::new(&b"abc"[..], gate.clone());
        gate.close();
        let mut buf = [0u8; 3];
        let read = reader.read(&mut buf);
        tokio::pin!(read);
        assert!(futures_util::poll!(read.as_mut()).is_pending());
        gate.open();
        assert_eq!(read.await.unwrap(), 3);
        assert_eq!(&buf, b"abc");
    }
}
