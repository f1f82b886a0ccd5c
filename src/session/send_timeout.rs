//! A writer that gives up when the peer stops reading.
//!
//! Keep-alive only watches what a client sends. A client that keeps sending but never reads
//! (or a half-open connection) would hold its unsent data, and its connection slot, for as
//! long as TCP retransmits. Once a write has waited longer than the send timeout, this writer
//! fails with `TimedOut`, the session ends, and the backlog is freed (EMQX's `send_timeout`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};

pub struct SendTimeout<W> {
    inner: W,
    timeout: Duration,
    /// Armed while the socket refuses data; reset by every write that makes progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<W> SendTimeout<W> {
    pub fn new(inner: W, timeout: Duration) -> SendTimeout<W> {
        SendTimeout {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// On `Pending`, starts (or checks) the stall clock; on progress, stops it.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
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
        self.watch(cx, poll)
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
        let mut writer = SendTimeout::new(client, Duration::from_secs(5));
        writer.write_all(&[0; 64]).await.unwrap();
        let started = Instant::now();
        let err = writer.write_all(&[0; 1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
