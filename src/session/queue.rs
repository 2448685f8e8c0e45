//! The session's command queue. Commands of one connection take effect, and are answered,
//! in the order they were sent. Publications pipeline: up to `window` of them run at once
//! (each given its offset by the engine in the order it was started, its reply released in
//! that order by the session); any other command is a barrier: it waits until every
//! publication before it is answered, and the next command waits until it is done (a
//! `subscribe` until its `subscribed` reply is queued). So a `publish` sent after a
//! `subscribe` to the same channel is delivered to that subscription, and replies never
//! overtake each other. Clients pipeline: they send without waiting, and the queue holds
//! what they sent.
//!
//! Bounded: at most `max_waiting` commands wait, of which at most `max_publishes` are
//! publications (one burst at the rate limit, so a connection cannot hold a backlog for an
//! engine that is not keeping up), and at most `window` publications are in flight. Pure
//! bookkeeping; the session runs the commands.

use std::collections::VecDeque;

use crate::protocol::{Command, CommandError, ErrorCode, Request};

/// A command as it arrived.
#[derive(Debug)]
pub(super) enum Queued {
    /// Accepted at arrival: it runs in its turn.
    Command(Request),
    /// Refused at arrival (malformed, over the publish rate, too many publications
    /// waiting): its error is answered in its turn.
    Refused(CommandError),
}

/// The queue of one session.
#[derive(Debug)]
pub(super) struct CommandQueue {
    waiting: VecDeque<Queued>,
    /// A command other than a publication is running; the next one waits for it.
    busy: bool,
    /// Publications started whose replies are not yet released.
    in_window: usize,
    /// The most publications in flight at once.
    window: usize,
    /// Publications among `waiting`.
    publishes: usize,
    max_waiting: usize,
    max_publishes: usize,
}

impl CommandQueue {
    /// An empty queue holding at most `max_waiting` commands, `max_publishes` of them
    /// publications, running at most `window` publications at once (all at least one).
    pub(super) fn new(max_waiting: usize, max_publishes: usize, window: usize) -> CommandQueue {
        CommandQueue {
            waiting: VecDeque::new(),
            busy: false,
            in_window: 0,
            window: window.max(1),
            publishes: 0,
            max_waiting: max_waiting.max(1),
            max_publishes: max_publishes.max(1),
        }
    }

    /// Queues what arrived, behind everything before it. A publication past
    /// `max_publishes` waits as a refusal (`unavailable`); past `max_waiting`, nothing is
    /// queued and the item comes back.
    pub(super) fn push(&mut self, item: Queued) -> Result<(), Queued> {
        if self.waiting.len() >= self.max_waiting {
            return Err(item);
        }
        let item = match item {
            Queued::Command(r) if matches!(r.command, Command::Publish { .. }) => {
                if self.publishes >= self.max_publishes {
                    Queued::Refused(CommandError {
                        id: r.id,
                        code: ErrorCode::Unavailable,
                        message: "too many publications waiting for the engine; nothing was \
                                  published"
                            .into(),
                    })
                } else {
                    self.publishes += 1;
                    Queued::Command(r)
                }
            }
            other => other,
        };
        self.waiting.push_back(item);
        Ok(())
    }

    /// The next command to run, unless it must wait: behind a running command, a
    /// publication behind a full window, anything else behind any publication in flight.
    pub(super) fn next(&mut self) -> Option<Queued> {
        if self.busy {
            return None;
        }
        let publication = matches!(
            self.waiting.front()?,
            Queued::Command(Request {
                command: Command::Publish { .. },
                ..
            })
        );
        let room = if publication {
            self.in_window < self.window
        } else {
            self.in_window == 0
        };
        if !room {
            return None;
        }
        let item = self.waiting.pop_front()?;
        if self.waiting.is_empty() {
            // A burst is over: its buffer goes, so a connection that pipelined once does not
            // keep it for its life (an entry is over a hundred bytes).
            self.waiting = VecDeque::new();
        }
        if let Queued::Command(Request {
            command: Command::Publish { .. },
            ..
        }) = &item
        {
            self.publishes -= 1;
        }
        Some(item)
    }

    /// The command just taken runs on (the engine or the broker answers later): the next
    /// waits until [`CommandQueue::done`].
    pub(super) fn hold(&mut self) {
        self.busy = true;
    }

    /// True when no command runs or waits: the next one may run at once, unqueued.
    pub(super) fn is_idle(&self) -> bool {
        !self.busy && self.in_window == 0 && self.waiting.is_empty()
    }

    /// A publication just taken was started: it holds a place in the window until its
    /// reply is released.
    pub(super) fn open_slot(&mut self) {
        self.in_window += 1;
    }

    /// `n` publications' replies were released, in order.
    pub(super) fn close_slots(&mut self, n: usize) {
        self.in_window = self.in_window.saturating_sub(n);
    }

    /// The running command is done.
    pub(super) fn done(&mut self) {
        self.busy = false;
    }

    /// Commands waiting (the running one aside).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse_command;

    fn cmd(text: &str) -> Queued {
        Queued::Command(parse_command(text).expect("valid command"))
    }

    fn publish(i: u64) -> Queued {
        cmd(&format!(
            r#"{{"type":"publish","id":{i},"channel":"c","data":{i}}}"#
        ))
    }

    fn kind(q: &Queued) -> String {
        match q {
            Queued::Command(r) => format!("{:?}", r.command)
                .split([' ', '{'])
                .next()
                .unwrap_or_default()
                .to_string(),
            Queued::Refused(e) => e.code.to_string(),
        }
    }

    #[test]
    fn commands_come_out_in_order_one_at_a_time() {
        let mut q = CommandQueue::new(10, 10, 1);
        q.push(cmd(r#"{"type":"subscribe","channel":"c"}"#))
            .unwrap();
        q.push(publish(1)).unwrap();
        q.push(cmd(r#"{"type":"ping"}"#)).unwrap();
        let first = q.next().expect("subscribe");
        assert_eq!(kind(&first), "Subscribe");
        q.hold();
        assert!(q.next().is_none(), "the publish waits for the subscribe");
        q.done();
        assert_eq!(kind(&q.next().expect("publish")), "Publish");
        assert_eq!(kind(&q.next().expect("ping")), "Ping");
        assert!(q.next().is_none());
    }

    #[test]
    fn publications_past_one_burst_wait_as_refusals_in_their_turn() {
        let mut q = CommandQueue::new(10, 2, 4);
        for i in 0..3 {
            q.push(publish(i)).unwrap();
        }
        let kinds: Vec<String> = std::iter::from_fn(|| q.next()).map(|q| kind(&q)).collect();
        assert_eq!(kinds, ["Publish", "Publish", "unavailable"]);
        // Taken out, they no longer count: the next burst is accepted.
        q.push(publish(4)).unwrap();
        assert_eq!(kind(&q.next().expect("publish")), "Publish");
    }

    #[test]
    fn the_queue_holds_at_most_max_waiting() {
        let mut q = CommandQueue::new(3, 3, 1);
        q.push(cmd(r#"{"type":"ping"}"#)).unwrap();
        q.hold();
        for _ in 0..2 {
            q.push(cmd(r#"{"type":"ping"}"#)).unwrap();
        }
        assert_eq!(q.len(), 3);
        assert!(q.push(cmd(r#"{"type":"ping"}"#)).is_err());
    }

    #[test]
    fn publications_pipeline_up_to_the_window_and_other_commands_wait_for_it() {
        let mut q = CommandQueue::new(10, 10, 2);
        for i in 0..3 {
            q.push(publish(i)).unwrap();
        }
        q.push(cmd(r#"{"type":"ping"}"#)).unwrap();
        q.push(publish(9)).unwrap();
        for _ in 0..2 {
            assert_eq!(kind(&q.next().expect("publish")), "Publish");
            q.open_slot();
        }
        assert!(q.next().is_none(), "the window is full");
        q.close_slots(1);
        assert_eq!(kind(&q.next().expect("publish")), "Publish");
        q.open_slot();
        assert!(q.next().is_none(), "the window is full again");
        q.close_slots(1);
        assert!(q.next().is_none(), "the ping waits for every publication");
        q.close_slots(1);
        assert_eq!(kind(&q.next().expect("ping")), "Ping");
        assert_eq!(kind(&q.next().expect("publish")), "Publish");
    }
}
