//! The stream lettre is handed for each SMTP connection: TCP, or TLS that
//! keywarden set up itself, and a switch that holds a message body back
//! until its terminator follows, so both leave in one write (lettre writes
//! them separately, which costs the server a second read per message).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use lettre::transport::smtp::client::AsyncTokioStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What carries the SMTP bytes: TCP, or TLS keywarden set up itself.
#[derive(Debug)]
pub(super) enum WireIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The data end of the message ends with this (dot-stuffing keeps it out
/// of the body itself).
pub(super) const END_OF_DATA: &[u8] = b"\r\n.\r\n";

/// The stream lettre is handed. While `hold` is on (set for one message
/// body), flushes are held until the bytes written end with the end of
/// data, so body and terminator leave in one write; then `hold` goes off.
/// Commands are never held.
#[derive(Debug)]
pub(super) struct WireStream {
    pub(super) io: WireIo,
    pub(super) held: Vec<u8>,
    pub(super) hold: Arc<AtomicBool>,
}

impl WireStream {
    fn io(&mut self) -> Pin<&mut (dyn AsyncWriteRead + Send + Sync + Unpin)> {
        match &mut self.io {
            WireIo::Plain(tcp) => Pin::new(tcp),
            WireIo::Tls(tls) => Pin::new(tls.as_mut()),
        }
    }

    /// Writes out what is held.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            let written = self.io().poll_write(cx, &held);
            self.held = held;
            match written {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.held.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

trait AsyncWriteRead: AsyncRead + AsyncWrite {}
impl<T: AsyncRead + AsyncWrite> AsyncWriteRead for T {}

impl AsyncTokioStream for WireStream {
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.io {
            WireIo::Plain(tcp) => tcp.peer_addr(),
            WireIo::Tls(tls) => tls.get_ref().0.peer_addr(),
        }
    }
}

impl AsyncRead for WireStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_read(cx, buf)
    }
}

impl AsyncWrite for WireStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.hold.load(Ordering::SeqCst) {
            self.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        match self.poll_drain(cx) {
            Poll::Ready(Ok(())) => self.io().poll_write(cx, buf),
            other => other.map(|r| r.map(|()| 0)),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.hold.load(Ordering::SeqCst) {
            if !self.held.ends_with(END_OF_DATA) {
                return Poll::Ready(Ok(()));
            }
            self.hold.store(false, Ordering::SeqCst);
        }
        match self.poll_drain(cx) {
            Poll::Ready(Ok(())) => self.io().poll_flush(cx),
            other => other,
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.poll_drain(cx) {
            Poll::Ready(Ok(())) => self.io().poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Commands go out at once; a held body goes out only with its
    /// terminator, and then holding stops.
    #[tokio::test]
    async fn a_body_leaves_with_its_terminator() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let hold = Arc::new(AtomicBool::new(false));
        let mut stream = WireStream {
            io: WireIo::Plain(client),
            held: Vec::new(),
            hold: hold.clone(),
        };
        let mut buf = vec![0u8; 64];

        stream.write_all(b"DATA\r\n").await.unwrap();
        stream.flush().await.unwrap();
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"DATA\r\n");

        hold.store(true, Ordering::SeqCst);
        stream.write_all(b"Subject: x\r\n\r\nbody").await.unwrap();
        stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let early = tokio::time::timeout(Duration::from_millis(1), server.read(&mut buf)).await;
        assert!(early.is_err(), "the body went out before its terminator");

        stream.write_all(END_OF_DATA).await.unwrap();
        stream.flush().await.unwrap();
        assert!(!hold.load(Ordering::SeqCst));
        let mut got = Vec::new();
        while !got.ends_with(END_OF_DATA) {
            let n = server.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"Subject: x\r\n\r\nbody\r\n.\r\n");

        stream.write_all(b"QUIT\r\n").await.unwrap();
        stream.flush().await.unwrap();
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"QUIT\r\n");
    }
}
