//! A lingering close: when the server ends a connection, it sends its FIN and then reads and
//! drops what the client still sends, for a moment, before closing the socket.
//!
//! A refusal (503) or a timeout (408) is answered before the request body was read. Closing a
//! socket with unread bytes in its receive queue makes the kernel answer with a reset, and a
//! reset can reach the client before it has read the answer, which it then never sees. Draining
//! until the client closes its side, or [`LINGER_MAX`] passes, lets the answer arrive; nginx
//! does the same (`lingering_close`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// How long a closing connection drains what its client sends: a client that got its answer
/// closes within a round trip, and one still sending a body sends it at once; two seconds
/// covers slow links and bounds how long a hostile client keeps the connection past its answer.
const LINGER_MAX: Duration = Duration::from_secs(2);

/// Bytes a closing connection drains at most: a batch body, the largest the server takes.
const LINGER_BYTES_MAX: usize = 1024 * 1024;

/// Bytes read per drain step.
const DRAIN_CHUNK_BYTES: usize = 4096;

/// A byte stream whose shutdown lingers (see the module doc).
#[derive(Debug)]
pub struct Lingering<T> {
    inner: T,
    /// Set once the write side is shut: the end of the linger.
    linger: Option<Pin<Box<Sleep>>>,
    drained_bytes: usize,
}

impl<T> Lingering<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            linger: None,
            drained_bytes: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Lingering<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.linger = Some(Box::pin(tokio::time::sleep(LINGER_MAX)));
        }
        let mut scratch = [0; DRAIN_CHUNK_BYTES];
        loop {
            if this.drained_bytes >= LINGER_BYTES_MAX {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => this.drained_bytes += buf.filled().len(),
                // A reset or another error: the socket is done with either way.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    let linger = this.linger.as_mut().map(Pin::as_mut);
                    return match linger.map(|sleep| sleep.poll(cx)) {
                        Some(Poll::Pending) => Poll::Pending,
                        _ => Poll::Ready(Ok(())),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_drains_until_the_client_closes() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = Lingering::new(server);
        client.write_all(b"unread body").await.unwrap();
        let closing = tokio::spawn(async move { server.shutdown().await });
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        drop(client);
        closing.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_stops_draining_after_the_linger_time() {
        let (_client, server) = tokio::io::duplex(64);
        let mut server = Lingering::new(server);
        let started = tokio::time::Instant::now();
        server.shutdown().await.unwrap();
        assert_eq!(started.elapsed(), LINGER_MAX);
    }
}
