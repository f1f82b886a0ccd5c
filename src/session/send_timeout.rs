//! A writer that gives up when the peer stops reading, and tells actix when the socket is full.
//!
//! Keep-alive only watches what a client sends. A client that keeps sending but never reads
//! (or a half-open connection) would hold its unsent data, and its connection slot, for as
//! long as TCP retransmits. Once a write has waited longer than the send timeout, this writer
//! fails with `TimedOut`, the session ends, and the backlog is freed (EMQX's `send_timeout`).
//!
//! actix 0.13's `FramedWrite` applies its high-water mark (pausing the actor until its buffer
//! drains, which stops the session reading and delivering) only when a write fails with
//! `WouldBlock`, the tokio 0.1 convention; tokio 1 sockets return `Pending` instead, and the
//! buffer would grow without bound. So a write that would wait is reported as `WouldBlock`;
//! the socket has registered the waker already, so the writer is woken when it is writable.

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};

use super::bypass::WriteWatch;

/// Lets the Registry end a connection whose session is paused on a full socket (its mailbox
/// is not read then, so a `Close` message would wait): the writer fails with
/// `ConnectionAborted`, which ends the session.
#[derive(Debug, Default)]
pub struct Abort {
    aborted: AtomicBool,
    waker: AtomicWaker,
}

impl Abort {
    pub fn trigger(&self) {
        self.aborted.store(true, Ordering::Release);
        self.waker.wake();
    }
}

pub struct SendTimeout<W> {
    inner: W,
    timeout: Duration,
    /// Armed while the socket refuses data; reset by every write that makes progress.
    stalled: Option<Pin<Box<Sleep>>>,
    abort: Arc<Abort>,
    /// Told how much of what the session encoded has reached the socket.
    write_watch: Rc<WriteWatch>,
}

impl<W> SendTimeout<W> {
    pub fn new(
        inner: W,
        timeout: Duration,
        abort: Arc<Abort>,
        watch: Rc<WriteWatch>,
    ) -> SendTimeout<W> {
        SendTimeout {
            inner,
            timeout,
            stalled: None,
            abort,
            write_watch: watch,
        }
    }

    /// On `Pending`, starts (or checks) the stall clock and listens for an abort; on progress,
    /// stops the clock.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if self.abort.aborted.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        self.abort.waker.register(cx.waker());
        // Checked again: a trigger between the first check and the registration would
        // otherwise not wake this writer.
        if self.abort.aborted.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {timeout:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for SendTimeout<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        match self.watch(cx, poll) {
            Poll::Pending => Poll::Ready(Err(io::ErrorKind::WouldBlock.into())),
            Poll::Ready(Ok(n)) => {
                self.write_watch.written(n);
                Poll::Ready(Ok(n))
            }
            ready => ready,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_fails_after_the_send_timeout() {
        // A pipe whose reader never reads: 64 bytes of buffer, then writes stall.
        let (client, _server) = tokio::io::duplex(64);
        let mut writer = SendTimeout::new(
            client,
            Duration::from_secs(5),
            Arc::default(),
            Rc::default(),
        );
        writer.write_all(&[0; 64]).await.unwrap();
        let started = Instant::now();
        // Until the timeout, a full pipe is reported as WouldBlock (see the module comment).
        let err = writer.write(&[0; 1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        let err = loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            match writer.write(&[0; 1]).await {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => break other.unwrap_err(),
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn an_abort_fails_the_writer() {
        let (client, _server) = tokio::io::duplex(8);
        let abort = Arc::new(Abort::default());
        let mut writer = SendTimeout::new(
            client,
            Duration::from_secs(60),
            abort.clone(),
            Rc::default(),
        );
        writer.write_all(&[0; 8]).await.unwrap();
        abort.trigger();
        let err = writer.write(&[0; 1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    }
}
