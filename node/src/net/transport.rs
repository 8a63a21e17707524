//! The transport: TCP + Noise + Yamux, as libp2p's `with_tcp` builds it, plus
//! bounds in time on what a dead path would otherwise hold up: a dial or an
//! inbound handshake ([`HANDSHAKE_TIMEOUT`]), and a write that cannot go
//! out ([`WRITE_STALL_MAX`]).

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::futures::{AsyncRead, AsyncWrite};
use libp2p::{noise, tcp, yamux, PeerId, Transport as _};
use libp2p_identity::Keypair;

/// A dial, or an inbound connection's handshake, that has not completed by
/// then is abandoned. The kernel alone would keep a dial to a silent host
/// pending for two minutes (SYN retries), and while it is pending no other
/// dial to that peer starts: a host back on the network would wait for the
/// next SYN retry, up to a minute away. Connecting, Noise and Yamux take a
/// few round trips: milliseconds on a LAN, well under this across the world.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection on which not one byte could be written for this long fails.
/// When the peer is gone, the kernel's send buffer fills up and stays full
/// until TCP gives up, many minutes later; closing such a connection
/// (libp2p flushes Yamux's goodbye first) would hang as long, and until it
/// is closed the peer counts as connected and is not redialled. A peer that
/// is there reads what it is sent: its pings would have failed long before.
pub const WRITE_STALL_MAX: Duration = Duration::from_secs(5);

/// TCP with Nagle off (consensus messages are small and latency-bound),
/// Noise for authentication, Yamux for streams.
pub(super) fn tcp_noise_yamux(key: &Keypair) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    Ok(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .map(|stream, _| StallGuard::new(stream, WRITE_STALL_MAX))
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .timeout(HANDSHAKE_TIMEOUT)
        .boxed())
}

/// A stream whose writes fail once they have made no progress for `limit`.
struct StallGuard<S> {
    inner: S,
    limit: Duration,
    /// Since the first write that found no room: when to give up.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> StallGuard<S> {
    fn new(inner: S, limit: Duration) -> StallGuard<S> {
        StallGuard { inner, limit, stalled: None }
    }

    /// What to answer when `inner` accepted nothing: wait, or give up.
    fn on_pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let deadline = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match deadline.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("nothing could be sent for {:.1} s", limit.as_secs_f64()),
            ))),
        }
    }

    fn on_ready<T>(&mut self, ready: io::Result<T>) -> Poll<io::Result<T>> {
        self.stalled = None;
        Poll::Ready(ready)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallGuard<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallGuard<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.on_pending(cx),
            Poll::Ready(r) => self.on_ready(r),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.on_pending(cx),
            Poll::Ready(r) => self.on_ready(r),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.on_pending(cx),
            Poll::Ready(r) => self.on_ready(r),
        }
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_close(cx) {
            Poll::Pending => self.on_pending(cx),
            Poll::Ready(r) => self.on_ready(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use libp2p::futures::AsyncWriteExt as _;

    use super::*;

    /// A writer with no room, ever (a peer that is gone).
    struct Full;

    impl AsyncWrite for Full {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    const LIMIT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn a_write_that_cannot_go_out_fails_after_the_stall_bound() {
        let started = std::time::Instant::now();
        let mut guard = StallGuard::new(Full, LIMIT);
        let err = guard.write_all(b"goodbye").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= LIMIT);
    }

    #[tokio::test]
    async fn writes_that_go_out_are_untouched_however_far_apart() {
        let mut guard = StallGuard::new(Vec::new(), LIMIT);
        guard.write_all(b"hello").await.unwrap();
        tokio::time::sleep(LIMIT * 2).await;
        guard.write_all(b" world").await.unwrap();
        guard.close().await.unwrap();
        assert_eq!(guard.inner, b"hello world");
    }
}
