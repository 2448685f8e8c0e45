//! Sharded pub/sub on a Redis Cluster: the node's subscriptions (its channels and the control
//! channel) are held with `SSUBSCRIBE` on the primary that owns each one's slot, over one
//! link per primary (a RESP3 connection of its own, whose pushes come back tagged with the
//! primary's address). Two tasks, started by `RedisEngine::start`: the manager applies the
//! migrations, reads the topology (`CLUSTER SLOTS` on the command connection) and sends the
//! subscriptions that are wanted; the reader takes every link's pushes in one queue and
//! drives each subscription's state from them.
//!
//! Why not redis-rs's own cluster pub/sub (docs/design/redis-cluster.md, 2.4): it
//! resubscribes several slots in one command (refused by Redis), forgets a channel when the
//! server unsubscribes it (a slot moved), and hands pushes on without their node. Here the
//! state follows what the server says, not what a reply says: a subscription is served from
//! its `ssubscribe` push, lost on an unasked `sunsubscribe` (slot migrated, failover), when
//! its link drops, or when the topology shows another owner; a lost subscription is sent
//! again to the owner and, once confirmed, the channel catches up from history (the same
//! gap filling as after a reconnect on one Redis), so a moved slot costs latency, not
//! publications. A request not confirmed within the command timeout is sent again. The node
//! is ready while every subscription is served.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::conn::slot_of;
use super::ordering::{digest, History, Position};
use super::reader::{backoff_ms, read_baseline, Event};
use super::resp::{ms, value_array, value_string, value_u64};
use super::schema::MigrateError;
use super::{Inner, Mode};
use crate::channel::ChannelName;
use crate::engine::EngineError;

/// A push of one link, with the address of the primary it came from.
type Tagged = (Arc<str>, PushInfo);

/// The cluster's pub/sub side of the engine (in `Inner::mode`).
pub(super) struct Shards {
    /// The first seed URL: links copy its scheme and credentials.
    seed: String,
    state: Mutex<State>,
    /// Wakes the manager: a subscription to send, a link or a subscription lost.
    kick: Notify,
    pushes: mpsc::UnboundedSender<Tagged>,
    /// Taken by the reader task when it starts.
    pushes_rx: Mutex<Option<mpsc::UnboundedReceiver<Tagged>>>,
}

#[derive(Default)]
struct State {
    /// Slot ranges and the address of the primary that owns each.
    slots: Vec<(u16, u16, Arc<str>)>,
    /// One link per primary subscribed on.
    links: HashMap<Arc<str>, MultiplexedConnection>,
    /// Pub/sub name -> subscription.
    subs: HashMap<String, Sub>,
}

struct Sub {
    state: SubState,
    /// Served before and lost since: the channel catches up when served again.
    recovering: bool,
    /// `subscribe_node` calls waiting for the first confirmation.
    waiters: Vec<oneshot::Sender<()>>,
}

#[derive(Clone, PartialEq, Eq)]
enum SubState {
    /// To be sent (new, or lost).
    Wanted,
    /// `SSUBSCRIBE` sent to the primary at `addr`, not confirmed yet.
    Sent { addr: Arc<str>, at: Instant },
    /// Confirmed by the primary at `addr`.
    Served { addr: Arc<str> },
}

impl SubState {
    fn addr(&self) -> Option<&Arc<str>> {
        match self {
            SubState::Wanted => None,
            SubState::Sent { addr, .. } | SubState::Served { addr } => Some(addr),
        }
    }
}

impl Shards {
    pub(super) fn new(seed: String) -> Self {
        let (pushes, rx) = mpsc::unbounded_channel();
        Shards {
            seed,
            state: Mutex::new(State::default()),
            kick: Notify::new(),
            pushes,
            pushes_rx: Mutex::new(Some(rx)),
        }
    }

    /// Wants a subscription; the receiver fires once it is served (at once if it is).
    fn want(&self, name: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.state.lock();
        let sub = state.subs.entry(name.to_string()).or_insert_with(|| Sub {
            state: SubState::Wanted,
            recovering: false,
            waiters: Vec::new(),
        });
        if matches!(sub.state, SubState::Served { .. }) {
            let _ = tx.send(());
        } else {
            sub.waiters.push(tx);
        }
        drop(state);
        self.kick.notify_one();
        rx
    }

    /// Stops wanting a subscription; answers the link it was sent on, to unsubscribe there.
    fn unwant(&self, name: &str) -> Option<MultiplexedConnection> {
        let mut state = self.state.lock();
        let sub = state.subs.remove(name)?;
        let addr = sub.state.addr()?;
        state.links.get(addr).cloned()
    }

    /// The primary owning `slot`, as last read.
    fn owner(&self, slot: u16) -> Option<Arc<str>> {
        self.state
            .lock()
            .slots
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .map(|(_, _, addr)| addr.clone())
    }

    /// Whether every subscription is served.
    fn all_served(&self) -> bool {
        self.state
            .lock()
            .subs
            .values()
            .all(|s| matches!(s.state, SubState::Served { .. }))
    }

    /// The URL of the link to the primary at `addr`: the seed's scheme and credentials,
    /// RESP3 (pushes).
    fn link_url(&self, addr: &str) -> String {
        let (scheme, rest) = self.seed.split_once("://").unwrap_or(("redis", ""));
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let userinfo = authority
            .rsplit_once('@')
            .map(|(u, _)| format!("{u}@"))
            .unwrap_or_default();
        format!("{scheme}://{userinfo}{addr}/?protocol=resp3")
    }
}

fn shards(inner: &Inner) -> Option<&Shards> {
    match &inner.mode {
        Mode::Cluster(s) => Some(s),
        Mode::Single { .. } => None,
    }
}

/// Starts the manager and reader tasks of a cluster engine.
pub(super) fn start(
    inner: &Arc<Inner>,
    events: mpsc::UnboundedReceiver<Event>,
    shutdown: &watch::Receiver<bool>,
) {
    let Some(pushes) = shards(inner).and_then(|s| s.pushes_rx.lock().take()) else {
        return;
    };
    tokio::spawn(reader_task(inner.clone(), events, pushes, shutdown.clone()));
    tokio::spawn(manager_task(inner.clone(), shutdown.clone()));
}

/// `subscribe_node` on a cluster: wants the sharded subscription, waits for the owner's
/// confirmation, then reads the baseline.
pub(super) async fn subscribe(inner: &Inner, channel: &ChannelName) -> Result<(), EngineError> {
    inner.check_ready()?;
    let Some(shards) = shards(inner) else {
        return Err(EngineError::Unavailable("not a cluster engine".into()));
    };
    let Some(generation) = inner.tracks.insert(channel) else {
        return Ok(());
    };
    let name = inner.keys.pubsub(channel.as_str());
    let served = shards.want(&name);
    let confirmed = tokio::time::timeout(inner.opts.command_timeout, served).await;
    let result = match confirmed {
        Ok(Ok(())) => read_baseline(inner, channel, generation).await,
        _ => Err(EngineError::Unavailable(
            "redis cluster subscribe was not confirmed in time".into(),
        )),
    };
    if result.is_err() {
        inner.tracks.forget(channel.as_str(), generation);
        if let Some(link) = shards.unwant(&name) {
            sunsubscribe(link, name, inner.opts.command_timeout).await;
        }
        update_ready(inner);
    }
    result
}

/// `unsubscribe_node` on a cluster.
pub(super) async fn unsubscribe(inner: &Inner, channel: &ChannelName) -> Result<(), EngineError> {
    inner.tracks.remove(channel.as_str());
    let name = inner.keys.pubsub(channel.as_str());
    if let Some(link) = shards(inner).and_then(|s| s.unwant(&name)) {
        sunsubscribe(link, name, inner.opts.command_timeout).await;
    }
    update_ready(inner);
    Ok(())
}

async fn sunsubscribe(mut link: MultiplexedConnection, name: String, limit: Duration) {
    let cmd = redis::cmd("SUNSUBSCRIBE").arg(&name).clone();
    match tokio::time::timeout(limit, cmd.query_async::<Value>(&mut link)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => log::debug!("sunsubscribe failed name={name}: {e}"),
        Err(_) => log::debug!("sunsubscribe timed out name={name}"),
    }
}

/// Ready while usable and every subscription is served.
fn update_ready(inner: &Inner) {
    let ready =
        inner.usable.load(Ordering::Acquire) && shards(inner).is_some_and(|s| s.all_served());
    inner.ready.store(ready, Ordering::Release);
}

/// Takes every link's pushes and the baselines of new subscriptions, in one order.
async fn reader_task(
    inner: Arc<Inner>,
    mut events: mpsc::UnboundedReceiver<Event>,
    mut pushes: mpsc::UnboundedReceiver<Tagged>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            // Baselines first: one sent before a message arrived is applied before it.
            event = events.recv() => match event {
                Some(event) => inner.on_event(event).await,
                None => break,
            },
            push = pushes.recv() => match push {
                Some((addr, push)) => on_push(&inner, addr, push).await,
                None => break,
            },
        }
    }
    inner.set_ready(false);
}

/// What one push means for the subscriptions.
async fn on_push(inner: &Arc<Inner>, addr: Arc<str>, push: PushInfo) {
    let Some(shards) = shards(inner) else {
        return;
    };
    let mut data = push.data.into_iter();
    let name = data.next().and_then(value_string);
    match (push.kind, name) {
        (PushKind::SMessage, Some(name)) => {
            if let Some(Value::BulkString(payload)) = data.next() {
                inner.on_pubsub(&name, &payload).await;
            }
        }
        (PushKind::SSubscribe, Some(name)) => {
            log::debug!("ssubscribed name={name} on={addr}");
            let (catch_up, stray) = {
                let mut state = shards.state.lock();
                let stray = state.links.get(&addr).cloned();
                match state.subs.get_mut(&name) {
                    Some(sub) if matches!(&sub.state, SubState::Sent { addr: a, .. } if *a == addr) =>
                    {
                        sub.state = SubState::Served { addr };
                        for w in sub.waiters.drain(..) {
                            let _ = w.send(());
                        }
                        (std::mem::take(&mut sub.recovering), None)
                    }
                    Some(sub) if sub.state.addr() == Some(&addr) => (false, None),
                    // Not wanted (any more), or wanted elsewhere: undo it here.
                    _ => (false, stray),
                }
            };
            if let Some(link) = stray {
                tokio::spawn(sunsubscribe(link, name.clone(), inner.opts.command_timeout));
            }
            update_ready(inner);
            if catch_up {
                recover(inner, &name).await;
            }
        }
        (PushKind::SUnsubscribe, Some(name)) => {
            // The answer to this node's own SUNSUBSCRIBE finds no subscription: only an
            // unasked one (the slot moved, its primary stepped down) loses one.
            let lost = {
                let mut state = shards.state.lock();
                match state.subs.get_mut(&name) {
                    Some(sub) if sub.state.addr() == Some(&addr) => {
                        sub.recovering |= matches!(sub.state, SubState::Served { .. });
                        sub.state = SubState::Wanted;
                        true
                    }
                    _ => false,
                }
            };
            if lost {
                log::info!(
                    "redis cluster dropped a subscription name={name} from={addr}; resubscribing"
                );
                inner.ready.store(false, Ordering::Release);
                shards.kick.notify_one();
            }
        }
        (PushKind::Disconnection, _) => {
            log::warn!("redis cluster link lost addr={addr}; resubscribing its channels");
            lose_link(shards, &addr);
            inner.ready.store(false, Ordering::Release);
            shards.kick.notify_one();
        }
        _ => {}
    }
}

/// Forgets the link to `addr`; its subscriptions are wanted again.
fn lose_link(shards: &Shards, addr: &Arc<str>) {
    let mut state = shards.state.lock();
    state.links.remove(addr);
    for sub in state.subs.values_mut() {
        if sub.state.addr() == Some(addr) {
            sub.recovering |= matches!(sub.state, SubState::Served { .. });
            sub.state = SubState::Wanted;
        }
    }
}

/// A channel whose subscription came back: deliver what it missed meanwhile; first, if the
/// shard rolled back (see [`rolled_back`]), end the channel's epoch, so that its subscribers
/// get `reset` instead of a silent gap.
async fn recover(inner: &Arc<Inner>, name: &str) {
    let Some(channel) = inner.keys.channel_of(name) else {
        return;
    };
    let Some((generation, Some(last), delivered)) = inner.tracks.held_one(channel) else {
        return;
    };
    if rolled_back(inner, channel, &last, delivered).await {
        end_epoch(inner, channel, &last).await;
    }
    let out = inner.handler().map(|h| &**h);
    inner
        .tracks
        .catch_up(&**inner, out, channel, generation, last)
        .await;
}

/// Whether the shard lost publications this node delivered: a replica promoted after its
/// primary died may miss the primary's last writes (replication is asynchronous), and then
/// assigns their offsets again to new publications. Told by the channel's offset being
/// behind the last one delivered in the same epoch, or by another publication stored at that
/// offset. A publication no longer in history (trimmed, or a history size of 0) cannot be
/// compared; then only the offset tells.
async fn rolled_back(
    inner: &Inner,
    channel: &str,
    last: &Position,
    (at, delivered): (u64, u64),
) -> bool {
    let Some(epoch) = last.epoch.as_deref() else {
        return false;
    };
    if last.offset == 0 {
        return false;
    }
    // Right after a failover the command connection may still route to the dead primary
    // until it has read the new slot map: try again for a while rather than skip the check.
    let deadline = Instant::now() + inner.opts.command_timeout * 5;
    let (latest, now, entries) = loop {
        match inner.range(channel, last.offset, last.offset).await {
            Ok(read) => break read,
            Err(e) if Instant::now() >= deadline => {
                log::warn!("cannot check channel={channel} after a failover: {e}");
                return false;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    if now != epoch {
        // Another epoch already: catching up resets.
        return false;
    }
    // The digest is of the last publication delivered, which is not always the last
    // position (a baseline, publications missing from history): compare only then.
    let stored = entries
        .iter()
        .find(|(o, _)| *o == last.offset && at == last.offset)
        .map(|(_, p)| digest(p));
    let lost = latest < last.offset || stored.is_some_and(|d| d != delivered);
    if lost {
        log::warn!(
            "redis cluster lost publications of channel={channel} epoch={epoch} (delivered up to {}, the shard holds {latest}); starting a new epoch",
            last.offset
        );
    }
    lost
}

/// Deletes the channel's meta and history if it is still in `last`'s epoch (another node
/// may have started the next one already): catching up then opens a new epoch and resets.
async fn end_epoch(inner: &Inner, channel: &str, last: &Position) {
    let script = "if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then \
                  return redis.call('DEL', KEYS[1], KEYS[2]) end return 0";
    let cmd = redis::cmd("EVAL")
        .arg(script)
        .arg(2)
        .arg(inner.keys.meta(channel))
        .arg(inner.keys.history(channel))
        .arg(last.epoch.as_deref().unwrap_or(""))
        .clone();
    if let Err(e) = inner.query(&cmd).await {
        log::warn!("could not end the epoch of channel={channel}: {e}");
    }
}

/// Applies the migrations, then keeps the subscriptions sent to their owners.
async fn manager_task(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let Some(shards) = shards(&inner) else {
        return;
    };
    let mut attempt: u32 = 0;
    // Until migrated: nothing else can run.
    while !inner.usable.load(Ordering::Acquire) {
        match inner.repair().await {
            Ok(_) => {
                inner.usable.store(true, Ordering::Release);
                log::info!("redis cluster engine usable node={}", inner.opts.node_id);
            }
            Err(e @ MigrateError::TooNew { .. }) => {
                log::error!("{e}; node={} stays not ready", inner.opts.node_id);
                return;
            }
            Err(e) => {
                if attempt.is_multiple_of(20) {
                    log::warn!(
                        "redis cluster not available node={}: {e}",
                        inner.opts.node_id
                    );
                }
                let delay = backoff_ms(attempt, ms(inner.opts.max_backoff), &mut rand::rng());
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
    // The control channel is held like a channel, with nobody waiting for it.
    drop(shards.want(&inner.keys.control));
    let mut health = tokio::time::interval(inner.opts.health_period);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Re-sends what was not confirmed in time, and retries after a failed round.
    let retry = Duration::from_millis(100 + rand::rng().random_range(0..100));
    loop {
        let mut check = false;
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = shards.kick.notified() => {}
            _ = health.tick() => check = true,
            _ = tokio::time::sleep(retry) => {}
        }
        if check {
            health_check(&inner, shards).await;
        }
        drive(&inner, shards).await;
        update_ready(&inner);
    }
}

/// Reads the topology again; a served subscription whose slot has another owner now (a
/// failover without a `sunsubscribe`, a link gone quiet) is wanted again. Also applies the
/// migrations again if the cluster lost the schema.
async fn health_check(inner: &Arc<Inner>, shards: &Shards) {
    if refresh_topology(inner, shards).await {
        let mut state = shards.state.lock();
        let State { slots, subs, .. } = &mut *state;
        for (name, sub) in subs.iter_mut() {
            let SubState::Served { addr } = &sub.state else {
                continue;
            };
            let slot = slot_of(tag_of(name));
            let owner = slots
                .iter()
                .find(|(a, b, _)| (*a..=*b).contains(&slot))
                .map(|(_, _, o)| o);
            if owner.is_some_and(|o| o != addr) {
                log::info!("redis cluster slot {slot} moved from {addr}; resubscribing {name}");
                sub.recovering = true;
                sub.state = SubState::Wanted;
            }
        }
        // A link nothing is subscribed on any more (its node handed its slots over) closes.
        let used: Vec<Arc<str>> = subs
            .values()
            .filter_map(|s| s.state.addr().cloned())
            .collect();
        state.links.retain(|addr, _| used.contains(addr));
    }
    let exists = inner
        .query(redis::cmd("EXISTS").arg(inner.keys.schema()))
        .await;
    if matches!(exists, Ok(Value::Int(0))) {
        log::warn!("redis cluster lost the schema key; applying migrations again");
        if let Err(e) = inner.repair().await {
            log::warn!("cannot apply migrations again: {e}");
        }
    }
}

/// The hash tag of a pub/sub name or key: what its slot is computed from.
fn tag_of(name: &str) -> &str {
    name.split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map_or(name, |(tag, _)| tag)
}

/// Reads `CLUSTER SLOTS`; false when it could not.
async fn refresh_topology(inner: &Inner, shards: &Shards) -> bool {
    let reply = match inner
        .query(&redis::cmd("CLUSTER").arg("SLOTS").clone())
        .await
    {
        Ok(v) => v,
        Err(e) => {
            log::debug!("CLUSTER SLOTS failed: {e}");
            return false;
        }
    };
    let mut slots = Vec::new();
    for range in value_array(reply) {
        let mut items = value_array(range).into_iter();
        let (Some(start), Some(end), Some(primary)) = (items.next(), items.next(), items.next())
        else {
            continue;
        };
        let mut primary = value_array(primary).into_iter();
        let (Some(host), Some(port)) = (primary.next().and_then(value_string), primary.next())
        else {
            continue;
        };
        let (Some(start), Some(end), Some(port)) =
            (value_u64(&start), value_u64(&end), value_u64(&port))
        else {
            continue;
        };
        if host.is_empty() {
            continue;
        }
        let (Ok(start), Ok(end)) = (u16::try_from(start), u16::try_from(end)) else {
            continue;
        };
        slots.push((start, end, Arc::from(format!("{host}:{port}"))));
    }
    if slots.is_empty() {
        return false;
    }
    log::debug!("redis cluster topology {slots:?}");
    shards.state.lock().slots = slots;
    true
}

/// Sends every subscription that is wanted, or sent and not confirmed in time, to the
/// owner of its slot.
async fn drive(inner: &Arc<Inner>, shards: &Shards) {
    let limit = inner.opts.command_timeout;
    let todo: Vec<String> = {
        let state = shards.state.lock();
        state
            .subs
            .iter()
            .filter(|(_, s)| match &s.state {
                SubState::Wanted => true,
                SubState::Sent { at, .. } => at.elapsed() >= limit,
                SubState::Served { .. } => false,
            })
            .map(|(n, _)| n.clone())
            .collect()
    };
    if todo.is_empty() {
        return;
    }
    // Something was lost or not confirmed: the topology may have changed.
    if !refresh_topology(inner, shards).await {
        return;
    }
    for name in todo {
        let Some(addr) = shards.owner(slot_of(tag_of(&name))) else {
            continue;
        };
        let Some(link) = link(inner, shards, &addr).await else {
            continue;
        };
        {
            let mut state = shards.state.lock();
            let Some(sub) = state.subs.get_mut(&name) else {
                continue;
            };
            if let SubState::Served { .. } = sub.state {
                continue;
            }
            sub.state = SubState::Sent {
                addr: addr.clone(),
                at: Instant::now(),
            };
        }
        // Confirmed by the push, not by this reply (an unasked push can take a reply's
        // place on the link); a request that got neither is sent again after `limit`.
        let mut link = link;
        log::debug!("ssubscribe name={name} on={addr}");
        tokio::spawn(async move {
            let cmd = redis::cmd("SSUBSCRIBE").arg(&name).clone();
            if let Ok(Err(e)) =
                tokio::time::timeout(limit, cmd.query_async::<Value>(&mut link)).await
            {
                log::debug!("ssubscribe failed name={name}: {e}");
            }
        });
    }
}

/// The link to the primary at `addr`, connected when there is none.
async fn link(inner: &Inner, shards: &Shards, addr: &Arc<str>) -> Option<MultiplexedConnection> {
    if let Some(link) = shards.state.lock().links.get(addr) {
        return Some(link.clone());
    }
    let url = shards.link_url(addr);
    let client = match redis::Client::open(url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("bad link address {addr}: {e}");
            return None;
        }
    };
    let tx = shards.pushes.clone();
    let tag = addr.clone();
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(inner.opts.command_timeout))
        .set_response_timeout(Some(inner.opts.command_timeout))
        .set_push_sender(move |p: PushInfo| tx.send((tag.clone(), p)));
    let connected = tokio::time::timeout(
        inner.opts.command_timeout,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await;
    match connected {
        Ok(Ok(link)) => {
            let mut state = shards.state.lock();
            Some(state.links.entry(addr.clone()).or_insert(link).clone())
        }
        Ok(Err(e)) => {
            log::debug!("cannot link to {addr}: {e}");
            None
        }
        Err(_) => {
            log::debug!("link to {addr} timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_link_urls() {
        assert_eq!(tag_of("sb:ch:{a/b}"), "a/b");
        assert_eq!(tag_of("{sb}:control"), "sb");
        assert_eq!(tag_of("plain"), "plain");
        let s = Shards::new("rediss://user:pw@10.0.0.1:7000/0".into());
        assert_eq!(
            s.link_url("10.0.0.2:7001"),
            "rediss://user:pw@10.0.0.2:7001/?protocol=resp3"
        );
        let s = Shards::new("redis://127.0.0.1:7000".into());
        assert_eq!(
            s.link_url("127.0.0.1:7002"),
            "redis://127.0.0.1:7002/?protocol=resp3"
        );
    }
}
