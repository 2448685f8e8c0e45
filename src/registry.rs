//! Every WebSocket session of this node: the connection count checked at the handshake
//! (`limits.max_connections`), and the way to reach sessions by user (operator disconnect)
//! or all at once (shutdown). The HTTP layer reserves a [`Slot`]; the session registers
//! itself when it starts and unregisters when it stops.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::Recipient;
use parking_lot::Mutex;

use crate::outbox::SessionControl;
use crate::protocol::CloseCode;
use crate::shrink::Shrink;

struct Entry {
    user: String,
    control: Recipient<SessionControl>,
}

/// The node's sessions.
pub struct Registry {
    sessions: Mutex<HashMap<Arc<str>, Entry>>,
    reserved: Arc<AtomicUsize>,
    max: usize,
}

/// A reserved connection place; released when dropped (by the session, or by a handshake
/// that failed after reserving).
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Registry {
    /// An empty registry that admits `max` connections.
    pub fn new(max: usize) -> Self {
        Registry {
            sessions: Mutex::new(HashMap::new()),
            reserved: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// Reserves a place for a new connection, or `None` when the node is full.
    pub fn try_reserve(&self) -> Option<Slot> {
        let mut current = self.reserved.load(Ordering::Acquire);
        loop {
            if current >= self.max {
                return None;
            }
            match self.reserved.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Slot(self.reserved.clone())),
                Err(now) => current = now,
            }
        }
    }

    /// Connections reserved or open.
    pub fn len(&self) -> usize {
        self.reserved.load(Ordering::Acquire)
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a started session.
    pub fn register(&self, client: Arc<str>, user: &str, control: Recipient<SessionControl>) {
        self.sessions.lock().insert(
            client,
            Entry {
                user: user.to_string(),
                control,
            },
        );
    }

    /// Forgets a stopped session.
    pub fn unregister(&self, client: &str) {
        let mut sessions = self.sessions.lock();
        sessions.remove(client);
        // After a burst of connections the table goes back to the size of what is left.
        sessions.shrink_when_sparse();
    }

    /// Tells every session of `user` to close with 4003; returns how many.
    pub fn disconnect_user(&self, user: &str) -> usize {
        let sessions = self.sessions.lock();
        let mut n = 0;
        for entry in sessions.values().filter(|e| e.user == user) {
            entry
                .control
                .do_send(SessionControl::Close(CloseCode::Disconnected));
            n += 1;
        }
        n
    }

    /// Tells every session to close with `code`; returns how many.
    pub fn close_all(&self, code: CloseCode) -> usize {
        let sessions = self.sessions.lock();
        for entry in sessions.values() {
            entry.control.do_send(SessionControl::Close(code));
        }
        sessions.len()
    }
}
