//! The join merge: how a subscriber that joins while publications flow gets every one of
//! them exactly once. While the node subscription, presence and history reads complete,
//! the shard buffers the channel's live publications for the joining subscriber; then
//! [`merge`] decides what it is sent, in order: the `subscribed` reply (with recovered
//! publications when asked), then the buffered publications newer than the reply's offset,
//! with a `reset` before any of a newer epoch. No gap, no duplicate, and never a live
//! message before `subscribed`. Pure: the shard does the sending, tests call it directly.

use std::sync::Arc;

use crate::channel::ChannelName;
use crate::engine::HistoryResult;
use crate::outbox::WsFrame;
use crate::protocol::{Id, ServerFrame, StreamPosition};

/// A live publication held back for a joining subscriber.
pub(super) struct Buffered {
    /// Its offset.
    pub offset: u64,
    /// Its epoch.
    pub epoch: Arc<str>,
    /// Its ready `message` frame.
    pub frame: WsFrame,
}

/// What a subscriber needs only until its `subscribed` reply is sent. Boxed apart from the
/// shard's subscriber record so that a live subscription, the long-lived state, carries one
/// pointer instead of the command's id, the recovery position and an empty buffer.
pub(super) struct Joining {
    /// The subscribe command's id, echoed in `subscribed` or the error reply.
    pub id: Option<Id>,
    /// Recover from this position.
    pub since: Option<StreamPosition>,
    /// Live publications held back until `subscribed` is sent.
    pub buffer: Vec<Buffered>,
}

/// What a joining subscriber is sent, in this order, and where that leaves it.
pub(super) struct Merged {
    /// The `subscribed` reply.
    pub reply: WsFrame,
    /// The buffered publications it did not cover, each of a new epoch preceded by `reset`.
    pub then: Vec<WsFrame>,
    /// The epoch and offset the subscriber is brought to: later publications at or below it
    /// are duplicates.
    pub position: (Arc<str>, u64),
}

/// Two epochs are the same: usually the same shared string, compared by pointer first.
pub(super) fn same_epoch(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// The `reset` push for a channel's new epoch.
pub(super) fn reset_frame(channel: &ChannelName, epoch: &str) -> WsFrame {
    WsFrame::text(
        &ServerFrame::Reset {
            channel: channel.as_str(),
            epoch,
        }
        .to_text(),
    )
}

/// Merges the engine's answer for a joining subscriber (the channel's position, and its
/// history after `since` when recovery was asked) with the live publications buffered
/// meanwhile.
pub(super) fn merge(channel: &ChannelName, joining: Joining, history: &HistoryResult) -> Merged {
    let (recovered, publications) = match &joining.since {
        Some(_) if history.recovered => (Some(true), Some(&history.publications[..])),
        Some(_) => (Some(false), Some(&[][..])),
        None => (None, None),
    };
    let reply = ServerFrame::Subscribed {
        id: joining.id.as_ref(),
        channel: channel.as_str(),
        offset: history.offset,
        epoch: &history.epoch,
        recovered,
        publications,
    }
    .to_text();
    let mut position = (history.epoch.clone(), history.offset);
    let mut then = Vec::new();
    for b in joining.buffer {
        if same_epoch(&b.epoch, &position.0) {
            // Covered by the reply (Redis answers history and pub/sub on separate
            // connections, so a publication can be both read and buffered).
            if b.offset <= position.1 {
                continue;
            }
        } else {
            then.push(reset_frame(channel, &b.epoch));
        }
        then.push(b.frame);
        position = (b.epoch, b.offset);
    }
    Merged {
        reply: WsFrame::text(&reply),
        then,
        position,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;
    use serde_json::{json, Value};

    use super::*;
    use crate::protocol::{message_frame, Publication};

    fn ch() -> ChannelName {
        ChannelName::parse("news").expect("valid")
    }

    fn publication(offset: u64) -> Publication {
        Publication {
            offset,
            data: Arc::from(RawValue::from_string(offset.to_string()).expect("json")),
            info: None,
        }
    }

    fn live(offset: u64, epoch: &str) -> Buffered {
        Buffered {
            offset,
            epoch: Arc::from(epoch),
            frame: WsFrame::text(&message_frame("news", &publication(offset))),
        }
    }

    /// A fake engine answer: the channel at `offset` in `epoch`, holding `held`.
    fn history(offset: u64, epoch: &str, held: &[u64], recovered: bool) -> HistoryResult {
        HistoryResult {
            offset,
            epoch: Arc::from(epoch),
            publications: held.iter().map(|&o| publication(o)).collect(),
            recovered,
        }
    }

    fn since(offset: u64, epoch: &str) -> Option<StreamPosition> {
        Some(StreamPosition {
            offset,
            epoch: epoch.into(),
        })
    }

    /// The JSON text of a server frame (7- or 16-bit length header).
    fn json_of(f: &WsFrame) -> Value {
        let header = if f.bytes()[1] < 126 { 2 } else { 4 };
        serde_json::from_slice(&f.bytes()[header..]).expect("json")
    }

    fn joining(since: Option<StreamPosition>, buffer: Vec<Buffered>) -> Joining {
        Joining {
            id: Some(Id::Num(7)),
            since,
            buffer,
        }
    }

    #[test]
    fn buffered_publications_the_reply_covered_are_not_sent_twice() {
        let j = joining(
            None,
            vec![live(3, "e"), live(4, "e"), live(5, "e"), live(6, "e")],
        );
        let m = merge(&ch(), j, &history(4, "e", &[], false));
        assert_eq!(
            json_of(&m.reply),
            json!({"type":"subscribed","id":7,"channel":"news","offset":4,"epoch":"e"})
        );
        let offsets: Vec<Value> = m
            .then
            .iter()
            .map(|f| json_of(f)["offset"].clone())
            .collect();
        assert_eq!(offsets, [json!(5), json!(6)]);
        assert_eq!(m.position, (Arc::from("e"), 6));
    }

    #[test]
    fn nothing_buffered_leaves_the_subscriber_at_the_reply() {
        let m = merge(&ch(), joining(None, vec![]), &history(0, "e", &[], false));
        assert!(m.then.is_empty());
        assert_eq!(m.position, (Arc::from("e"), 0));
    }

    #[test]
    fn recovery_sends_the_held_gap_in_the_reply_then_only_newer_live_ones() {
        let j = joining(since(2, "e"), vec![live(4, "e"), live(5, "e")]);
        let m = merge(&ch(), j, &history(4, "e", &[3, 4], true));
        let reply = json_of(&m.reply);
        assert_eq!(reply["recovered"], json!(true));
        assert_eq!(
            reply["publications"],
            json!([{"offset":3,"data":3},{"offset":4,"data":4}])
        );
        assert_eq!(m.then.len(), 1);
        assert_eq!(json_of(&m.then[0])["offset"], json!(5));
    }

    #[test]
    fn a_lost_gap_says_not_recovered_with_no_publications() {
        let m = merge(
            &ch(),
            joining(since(2, "old"), vec![]),
            &history(9, "e", &[], false),
        );
        let reply = json_of(&m.reply);
        assert_eq!(reply["recovered"], json!(false));
        assert_eq!(reply["publications"], json!([]));
        assert_eq!(reply["offset"], json!(9));
    }

    #[test]
    fn a_buffered_publication_of_a_new_epoch_comes_after_a_reset() {
        let j = joining(None, vec![live(8, "e"), live(1, "f"), live(2, "f")]);
        let m = merge(&ch(), j, &history(7, "e", &[], false));
        let sent: Vec<Value> = m.then.iter().map(json_of).collect();
        assert_eq!(sent[0]["offset"], json!(8));
        assert_eq!(
            sent[1],
            json!({"type":"reset","channel":"news","epoch":"f"})
        );
        assert_eq!(sent[2]["offset"], json!(1));
        assert_eq!(sent[3]["offset"], json!(2));
        assert_eq!(sent.len(), 4);
        assert_eq!(m.position, (Arc::from("f"), 2));
    }
}
