//! The response body of a WebSocket connection: the session's outbox (its replies and the
//! deliveries, in one queue, so they reach the client in the order they were queued),
//! copied into the connection in one chunk per batch without waking the actor, and
//! between those the actor's own frames (`welcome`, Ping, Pong, the Close frame).
//!
//! It also decides when the connection ends: the end of this body is when the HTTP layer
//! closes the TCP connection (at once: the vendored actix-http does not linger after an
//! upgraded response, see vendor/README.md). RFC 6455 section 7.1.1 wants the server to
//! close it first, once the close handshake is done, and clients wait for that; so the body
//! ends when the actor has stopped (its Close handed over) and the client's Close has come
//! too, or its side of the connection has ended, or [`CLOSE_REPLY_WAIT`] has passed. The
//! client's frames reach the actor through [`ClientStream`], which notes where they end;
//! once the actor has stopped, the body reads (and drops) what the client still sends.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::error::PayloadError;
use actix_web::web;
use bytes::Bytes;
use futures_util::Stream;

use crate::outbox::{Outbox, WsFrame};

/// How long the connection stays open after the server's Close for the client's Close. A
/// client that answers does so within a round trip; one that does not (gone, or not
/// reading) holds the socket no longer than this.
pub(super) const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);

/// The body: the actor's own frames (`welcome`, control frames) go first within a poll, so
/// a Pong is not held behind a long run of deliveries; once the session closed, what its
/// outbox still holds goes before the Close frame, and nothing enters the outbox after it.
pub(super) struct SessionBody<S> {
    /// The actor's own output stream.
    actor: S,
    /// The session's outbox, drained between the actor's frames.
    outbox: Arc<Outbox>,
    /// The drained queue, kept for its capacity.
    spare: VecDeque<(u64, WsFrame)>,
    /// The actor's last output (its Close frame), held while the outbox empties.
    held: Option<Bytes>,
    /// The client's side, shared with the actor's [`ClientStream`].
    client: Rc<RefCell<ClientSide>>,
    /// Set once the actor's stream has ended: the deadline for the client's Close.
    closing: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> SessionBody<S> {
    /// The body of a connection whose actor writes `actor`, reads `client` and queues
    /// deliveries in `outbox`.
    pub(super) fn new(actor: S, outbox: Arc<Outbox>, client: Rc<RefCell<ClientSide>>) -> Self {
        SessionBody {
            actor,
            outbox,
            spare: VecDeque::new(),
            held: None,
            client,
            closing: None,
        }
    }
}

impl<S> Stream for SessionBody<S>
where
    S: Stream<Item = Result<Bytes, actix_web::Error>> + Unpin,
{
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        while this.closing.is_none() {
            // Once the session closed, what its outbox still holds (its last replies and
            // the `disconnect` push) goes before the actor's Close frame.
            if this.outbox.is_closed() {
                if let Poll::Ready(chunk) = this.outbox.poll_drain(&mut this.spare, cx) {
                    return Poll::Ready(Some(Ok(chunk)));
                }
                if let Some(held) = this.held.take() {
                    return Poll::Ready(Some(Ok(held)));
                }
                match Pin::new(&mut this.actor).poll_next(cx) {
                    Poll::Ready(None) => break,
                    pending_bytes_or_error => return pending_bytes_or_error,
                }
            }
            match Pin::new(&mut this.actor).poll_next(cx) {
                // The actor closed the session while it was polled: its Close frame waits
                // for the outbox's last frames.
                Poll::Ready(Some(Ok(bytes))) if this.outbox.is_closed() => {
                    this.held = Some(bytes);
                }
                Poll::Pending => {
                    return this
                        .outbox
                        .poll_drain(&mut this.spare, cx)
                        .map(|chunk| Some(Ok(chunk)))
                }
                Poll::Ready(None) => break,
                bytes_or_error => return bytes_or_error,
            }
        }
        // The actor has stopped, its Close handed over: now for the client's.
        let closing = this
            .closing
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(CLOSE_REPLY_WAIT)));
        let mut client = this.client.borrow_mut();
        while !client.done() {
            if client.poll_read(cx).is_pending() {
                break;
            }
        }
        if client.done() {
            return Poll::Ready(None);
        }
        closing.as_mut().poll(cx).map(|()| None)
    }
}

/// The client's side of the connection: the request payload (what the client sends after
/// the handshake), read by the actor while it runs and by the body after it stopped.
pub(super) struct ClientSide {
    payload: web::Payload,
    frames: FrameTracker,
    /// The payload has ended (the client closed its side, or reading failed).
    ended: bool,
}

impl ClientSide {
    /// The client's side of a connection whose request payload is `payload`.
    pub(super) fn new(payload: web::Payload) -> Rc<RefCell<ClientSide>> {
        Rc::new(RefCell::new(ClientSide {
            payload,
            frames: FrameTracker::default(),
            ended: false,
        }))
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, PayloadError>>> {
        let read = Pin::new(&mut self.payload).poll_next(cx);
        match &read {
            Poll::Ready(Some(Ok(bytes))) => self.frames.feed(bytes),
            Poll::Ready(_) => self.ended = true,
            Poll::Pending => {}
        }
        read
    }

    /// The client has closed: its Close frame has come whole, or its side has ended.
    fn done(&self) -> bool {
        self.frames.closed || self.ended
    }
}

/// The client's bytes as the actor reads them (through actix-web-actors' frame decoder).
pub(super) struct ClientStream(pub(super) Rc<RefCell<ClientSide>>);

impl Stream for ClientStream {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.borrow_mut().poll_read(cx)
    }
}

/// Follows the client's frames by their headers as the bytes pass, keeping none of them,
/// to see when a whole Close frame has come. It only follows lengths, so it stays in step
/// whatever the frames hold (the actor's decoder judges them).
#[derive(Default)]
struct FrameTracker {
    /// The header of the next frame, as far as it has come (at most 2 + 8 + 4 bytes).
    head: [u8; 14],
    head_len: usize,
    /// Payload bytes of the current frame still to come.
    rest: u64,
    /// The current frame is a Close.
    in_close: bool,
    /// A whole Close frame has come.
    closed: bool,
}

impl FrameTracker {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !self.closed {
            if self.rest > 0 {
                let n = self.rest.min(bytes.len() as u64) as usize;
                if n == 0 {
                    return;
                }
                bytes = &bytes[n..];
                self.rest -= n as u64;
            } else {
                let Some((&byte, tail)) = bytes.split_first() else {
                    return;
                };
                bytes = tail;
                self.head[self.head_len] = byte;
                self.head_len += 1;
                if header_size(&self.head[..self.head_len]) != Some(self.head_len) {
                    continue;
                }
                self.rest = payload_len(&self.head);
                self.in_close = self.head[0] & 0x0f == 0x8;
                self.head_len = 0;
            }
            if self.rest == 0 && self.in_close {
                self.closed = true;
            }
        }
    }
}

/// The size of a frame header that starts with `head`, once its second byte is known.
fn header_size(head: &[u8]) -> Option<usize> {
    let second = *head.get(1)?;
    let extended = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    Some(2 + extended + mask)
}

/// The payload length a whole frame header gives.
fn payload_len(head: &[u8; 14]) -> u64 {
    match head[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        127 => {
            let mut len = [0u8; 8];
            len.copy_from_slice(&head[2..10]);
            u64::from_be_bytes(len)
        }
        n => u64::from(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame with `payload`.
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [1, 2, 3, 4];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        f
    }

    fn closed_after(chunks: &[&[u8]]) -> Vec<bool> {
        let mut t = FrameTracker::default();
        chunks
            .iter()
            .map(|c| {
                t.feed(c);
                t.closed
            })
            .collect()
    }

    #[test]
    fn a_close_counts_once_it_has_come_whole() {
        let close = frame(0x8, &1000u16.to_be_bytes());
        assert_eq!(closed_after(&[&close]), [true]);
        assert_eq!(closed_after(&[&close[..3], &close[3..7]]), [false, false]);
        let (a, b) = close.split_at(close.len() - 1);
        assert_eq!(closed_after(&[a, b]), [false, true]);
        assert_eq!(closed_after(&[&frame(0x8, b"")]), [true]);
    }

    #[test]
    fn frames_before_the_close_are_skipped_whatever_they_hold() {
        // Payloads that look like Close headers, and the three length encodings.
        let fake = [0x88u8, 0x80, 0, 0, 0, 0];
        let mut bytes = frame(0x1, &fake);
        bytes.extend(frame(0x2, &vec![0x88; 300]));
        bytes.extend(frame(0x2, &vec![0x88; 70_000]));
        bytes.extend(frame(0x9, b"ping"));
        assert_eq!(closed_after(&[&bytes]), [false]);
        // Byte by byte, then the Close.
        let mut t = FrameTracker::default();
        for b in &bytes {
            t.feed(std::slice::from_ref(b));
            assert!(!t.closed);
        }
        t.feed(&frame(0x8, b""));
        assert!(t.closed);
    }

    #[test]
    fn an_unmasked_frame_is_followed_too() {
        // The actor's decoder refuses it (1002); the tracker still keeps step.
        let mut bytes = vec![0x81, 0x02, b'h', b'i'];
        bytes.extend(frame(0x8, b""));
        assert_eq!(closed_after(&[&bytes]), [true]);
    }
}
