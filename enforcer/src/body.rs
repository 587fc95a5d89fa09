//! Body plumbing: one boxed body type for both directions, and peeking at the first bytes of
//! a streaming body without losing the rest.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::BoxBody};

/// Errors a proxied body can carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type used everywhere in the proxy.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Boxes any body whose errors convert into [`BoxError`].
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// The first bytes of a body and a body that still yields all of it.
#[derive(Debug)]
pub struct Peeked {
    /// Up to `cap` bytes from the start (more if one frame was larger).
    pub prefix: Bytes,
    /// Whether `prefix` is the whole body.
    pub complete: bool,
}

/// Reads frames until at least `cap` bytes or the end, then returns what was read and a body
/// replaying it followed by the rest of the stream. Trailers are passed through.
pub async fn peek<B>(mut body: B, cap: usize) -> Result<(Peeked, ProxyBody), BoxError>
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let mut buf = BytesMut::new();
    while buf.len() < cap {
        match body.frame().await {
            None => {
                let prefix = buf.freeze();
                return Ok((
                    Peeked {
                        prefix: prefix.clone(),
                        complete: true,
                    },
                    full(prefix),
                ));
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => buf.extend_from_slice(&data),
                Err(trailers) => {
                    // Trailers end the body.
                    let prefix = buf.freeze();
                    let replay = Replay {
                        prefix: Some(prefix.clone()),
                        trailers: Some(trailers),
                        rest: None::<B>,
                    };
                    return Ok((
                        Peeked {
                            prefix,
                            complete: true,
                        },
                        boxed(replay),
                    ));
                }
            },
        }
    }
    let prefix = buf.freeze();
    let replay = Replay {
        prefix: Some(prefix.clone()),
        trailers: None,
        rest: Some(body),
    };
    Ok((
        Peeked {
            prefix,
            complete: false,
        },
        boxed(replay),
    ))
}

/// Yields a prefix, then the rest of a body (or stored trailers).
struct Replay<B> {
    prefix: Option<Bytes>,
    trailers: Option<Frame<Bytes>>,
    rest: Option<B>,
}

impl<B> Body for Replay<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take()
            && !prefix.is_empty()
        {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        if let Some(trailers) = self.trailers.take() {
            return Poll::Ready(Some(Ok(trailers)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.as_ref().is_none_or(Bytes::is_empty)
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        match &self.rest {
            Some(rest) => {
                let h = rest.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + prefix);
                if let Some(u) = h.upper() {
                    out.set_upper(u + prefix);
                }
                out
            }
            None => SizeHint::with_exact(prefix),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::StreamBody;

    use super::*;

    fn chunked(
        chunks: &[&'static str],
    ) -> impl Body<Data = Bytes, Error = BoxError> + Send + Sync + Unpin + 'static {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        StreamBody::new(tokio_stream_iter(frames))
    }

    fn tokio_stream_iter<T: Send + Sync + Unpin + 'static>(
        items: Vec<T>,
    ) -> impl futures_core::Stream<Item = T> + Send + Sync + Unpin {
        struct Iter<T>(std::vec::IntoIter<T>);
        impl<T: Unpin> futures_core::Stream for Iter<T> {
            type Item = T;
            fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<T>> {
                Poll::Ready(self.0.next())
            }
        }
        Iter(items.into_iter())
    }

    #[tokio::test]
    async fn peeking_keeps_every_byte() {
        for cap in [0, 1, 3, 5, 100] {
            let (peeked, body) = peek(chunked(&["ab", "cde", "fg"]), cap).await.unwrap();
            let all = body.collect().await.unwrap().to_bytes();
            assert_eq!(&all[..], b"abcdefg", "cap {cap}");
            assert!(peeked.prefix.len() >= cap.min(7));
            assert_eq!(peeked.complete, cap > 7, "cap {cap}");
        }
    }
}
