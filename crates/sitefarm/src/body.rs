//! Response bodies that cost next to nothing to serve: bytes already in memory,
//! bytes held back for a while, and filler of any length streamed from one static buffer.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

/// Size of each chunk of a filler body; large enough to keep per-frame overhead low,
/// small enough that a slow reader never makes us buffer much.
const FILLER_CHUNK: usize = 64 * 1024;

/// Shared by every filler body so `/big/{bytes}` never allocates, whatever its size.
static FILLER: [u8; FILLER_CHUNK] = filler();

const fn filler() -> [u8; FILLER_CHUNK] {
    // Readable text rather than zeros, so a human looking at a capture sees what it is.
    let line = b"sitefarm filler 0123456789 abcdefghijklmnopqrstuvwxyz\n";
    let mut out = [0u8; FILLER_CHUNK];
    let mut i = 0;
    while i < FILLER_CHUNK {
        out[i] = line[i % line.len()];
        i += 1;
    }
    out
}

/// The body of every response the farm sends.
#[derive(Debug)]
pub(crate) struct SiteBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// Sent in one frame; `None` once sent (or when empty).
    Bytes(Option<Bytes>),
    /// Sent in one frame once `delay` has elapsed.
    Delayed {
        delay: Pin<Box<Sleep>>,
        data: Option<Bytes>,
    },
    /// `remaining` bytes of [`FILLER`], one chunk per frame.
    Filler { remaining: u64 },
    /// One byte every `every`, never ending: a server that trickles.
    Drip {
        every: Duration,
        next: Pin<Box<Sleep>>,
    },
}

impl SiteBody {
    /// A body sent at once.
    pub(crate) fn bytes(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Self {
            kind: Kind::Bytes((!data.is_empty()).then_some(data)),
        }
    }

    /// An empty body.
    pub(crate) fn empty() -> Self {
        Self {
            kind: Kind::Bytes(None),
        }
    }

    /// A body held back for `delay` after the response head has gone out.
    pub(crate) fn delayed(delay: Duration, data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        if data.is_empty() {
            return Self::empty();
        }
        Self {
            kind: Kind::Delayed {
                delay: Box::pin(tokio::time::sleep(delay)),
                data: Some(data),
            },
        }
    }

    /// A body of exactly `len` filler bytes, produced as the client reads it.
    pub(crate) fn filler(len: u64) -> Self {
        Self {
            kind: Kind::Filler { remaining: len },
        }
    }

    /// A body that never ends, one byte every `every` (sent chunked).
    pub(crate) fn drip(every: Duration) -> Self {
        Self {
            kind: Kind::Drip {
                every,
                next: Box::pin(tokio::time::sleep(every)),
            },
        }
    }

    /// Bytes still to send, if known; hyper turns this into `Content-Length`.
    fn remaining(&self) -> Option<u64> {
        match &self.kind {
            Kind::Bytes(data) | Kind::Delayed { data, .. } => {
                Some(data.as_ref().map_or(0, |data| data.len() as u64))
            }
            Kind::Filler { remaining } => Some(*remaining),
            Kind::Drip { .. } => None,
        }
    }
}

impl Body for SiteBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Bytes(data) => Poll::Ready(data.take().map(|data| Ok(Frame::data(data)))),
            Kind::Delayed { delay, data } => {
                if data.is_none() {
                    return Poll::Ready(None);
                }
                ready!(delay.as_mut().poll(cx));
                Poll::Ready(data.take().map(|data| Ok(Frame::data(data))))
            }
            Kind::Filler { remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let len = usize::try_from(*remaining).map_or(FILLER_CHUNK, |r| r.min(FILLER_CHUNK));
                *remaining -= len as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILLER[..len])))))
            }
            Kind::Drip { every, next } => {
                ready!(next.as_mut().poll(cx));
                let at = next.deadline() + *every;
                next.as_mut().reset(at);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b".")))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining() == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        self.remaining()
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn collect(body: SiteBody) -> (usize, Bytes) {
        let mut body = body;
        let mut frames = 0;
        let mut all = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            all.extend_from_slice(frame.data_ref().unwrap());
            frames += 1;
        }
        (frames, Bytes::from(all))
    }

    #[tokio::test]
    async fn filler_has_exact_length_in_chunks() {
        let len = 3 * FILLER_CHUNK as u64 + 7;
        let body = SiteBody::filler(len);
        assert_eq!(body.size_hint().exact(), Some(len));
        let (frames, data) = collect(body).await;
        assert_eq!(frames, 4);
        assert_eq!(data.len() as u64, len);
    }

    #[tokio::test]
    async fn empty_bodies_end_at_once() {
        for body in [SiteBody::empty(), SiteBody::bytes(""), SiteBody::filler(0)] {
            assert!(body.is_end_stream());
            assert_eq!(body.size_hint().exact(), Some(0));
            assert_eq!(collect(body).await.0, 0);
        }
    }

    #[tokio::test]
    async fn a_drip_sends_a_byte_at_a_time_and_never_ends() {
        let mut body = SiteBody::drip(Duration::from_millis(10));
        assert_eq!(body.size_hint().exact(), None);
        let started = tokio::time::Instant::now();
        for _ in 0..3 {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.data_ref().unwrap().len(), 1);
        }
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert!(!body.is_end_stream());
    }

    #[tokio::test]
    async fn delayed_body_waits() {
        let started = tokio::time::Instant::now();
        let body = SiteBody::delayed(Duration::from_millis(50), "late");
        assert_eq!(body.size_hint().exact(), Some(4));
        let (_, data) = collect(body).await;
        assert_eq!(&data[..], b"late");
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
