//! Key and channel names of one prefix: the one place that knows the Redis key layout
//! (the headers of the files in `migrations/` say what each key holds). Every other
//! file of the engine asks [`Keys`] for a name; nothing here talks to Redis.
//!
//! Per-channel keys carry the channel in a `{hash tag}`, so a channel's meta, history and
//! presence land in one slot of a Redis Cluster. On a cluster ([`Keys::cluster`]) the keys
//! that are not per channel (schema, migration lock and log, the node list and counts,
//! disconnect answers, the control channel) all carry the prefix as their tag, `{<p>}`, so
//! they share one slot: the node list is read with one pipeline and the lock guards the
//! schema in one place. One Redis keeps its historical names ([`Keys::new`]).

/// Key and channel names of one prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    /// The prefix itself, `p`.
    pub(super) prefix: String,
    /// `<p>:ch:{`, the start of every channel's pub/sub name (kept to parse names back).
    ch_prefix: String,
    /// `<p>:control` (`{<p>}:control` on a cluster), the pub/sub channel of node-to-node
    /// commands.
    pub(super) control: String,
    /// The start of every key that is not per channel: `<p>`, or `{<p>}` on a cluster.
    global: String,
    /// Whether the layout is a cluster's (see the file's header).
    cluster: bool,
}

impl Keys {
    /// The layout on one Redis.
    pub(super) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
            ch_prefix: format!("{prefix}:ch:{{"),
            control: format!("{prefix}:control"),
            global: prefix.to_string(),
            cluster: false,
        }
    }

    /// The layout on a Redis Cluster: what is not per channel lives in the slot of `{<p>}`.
    pub(super) fn cluster(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
            ch_prefix: format!("{prefix}:ch:{{"),
            control: format!("{{{prefix}}}:control"),
            global: format!("{{{prefix}}}"),
            cluster: true,
        }
    }

    /// `<p>:meta:{ch}`: the channel's latest offset and epoch.
    pub(super) fn meta(&self, ch: &str) -> String {
        format!("{}:meta:{{{ch}}}", self.prefix)
    }

    /// `<p>:history:{ch}`: the channel's history stream.
    pub(super) fn history(&self, ch: &str) -> String {
        format!("{}:history:{{{ch}}}", self.prefix)
    }

    /// `<p>:idem:{ch}:<key>`: the `offset:epoch` first published with an idempotency key
    /// on the channel, for the key's window. The key follows the channel's hash tag (any
    /// braces in it come after the tag, so they do not move the slot).
    pub(super) fn idem(&self, ch: &str, key: &str) -> String {
        format!("{}:idem:{{{ch}}}:{key}", self.prefix)
    }

    /// `<p>:ch:{ch}`: the pub/sub channel publications and pushes travel on.
    pub(super) fn pubsub(&self, ch: &str) -> String {
        format!("{}{ch}}}", self.ch_prefix)
    }

    /// `<p>:presence:{ch}`: client -> presence info.
    pub(super) fn presence(&self, ch: &str) -> String {
        format!("{}:presence:{{{ch}}}", self.prefix)
    }

    /// `<p>:presence:{ch}:exp`: client -> expiry, to drop entries of a dead node.
    pub(super) fn presence_exp(&self, ch: &str) -> String {
        format!("{}:presence:{{{ch}}}:exp", self.prefix)
    }

    /// `<p>:schema`: the schema version applied.
    pub(super) fn schema(&self) -> String {
        format!("{}:schema", self.global)
    }

    /// `<p>:migrate:lock`: held while one node applies migrations.
    pub(super) fn lock(&self) -> String {
        format!("{}:migrate:lock", self.global)
    }

    /// `<p>:migrations`: the log of migrations applied.
    pub(super) fn migration_log(&self) -> String {
        format!("{}:migrations", self.global)
    }

    /// `<p>:nodes`: node -> last beat.
    pub(super) fn nodes(&self) -> String {
        format!("{}:nodes", self.global)
    }

    /// `<p>:subs:{node}` (`{<p>}:subs:<node>` on a cluster): a node's local subscriber
    /// counts.
    pub(super) fn subs(&self, node: &str) -> String {
        if self.cluster {
            format!("{}:subs:{node}", self.global)
        } else {
            format!("{}:subs:{{{node}}}", self.prefix)
        }
    }

    /// `<p>:disc:{req}` (`{<p>}:disc:<req>` on a cluster): the nodes' answers to one
    /// disconnect request.
    pub(super) fn disc(&self, req: &str) -> String {
        if self.cluster {
            format!("{}:disc:{req}", self.global)
        } else {
            format!("{}:disc:{{{req}}}", self.prefix)
        }
    }

    /// The channel name inside a `<p>:ch:{name}` pub/sub channel.
    pub(super) fn channel_of<'a>(&self, pubsub: &'a str) -> Option<&'a str> {
        pubsub.strip_prefix(&self.ch_prefix)?.strip_suffix('}')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_use_hash_tags_and_parse_back() {
        let k = Keys::new("sb");
        assert_eq!(k.meta("chat:lobby"), "sb:meta:{chat:lobby}");
        assert_eq!(k.history("a"), "sb:history:{a}");
        assert_eq!(k.pubsub("a/b"), "sb:ch:{a/b}");
        assert_eq!(k.channel_of("sb:ch:{a/b}"), Some("a/b"));
        assert_eq!(k.channel_of("sb:control"), None);
        assert_eq!(k.presence_exp("x"), "sb:presence:{x}:exp");
        assert_eq!(k.idem("a/b", "k{1}:é"), "sb:idem:{a/b}:k{1}:é");
        assert_eq!(
            (k.schema(), k.subs("n1")),
            ("sb:schema".into(), "sb:subs:{n1}".into())
        );
    }

    #[test]
    fn cluster_keys_share_the_prefix_slot() {
        let k = Keys::cluster("sb");
        assert_eq!(k.meta("a"), "sb:meta:{a}", "per channel: unchanged");
        assert_eq!(k.pubsub("a"), "sb:ch:{a}");
        assert_eq!(k.schema(), "{sb}:schema");
        assert_eq!(k.lock(), "{sb}:migrate:lock");
        assert_eq!(k.migration_log(), "{sb}:migrations");
        assert_eq!(k.nodes(), "{sb}:nodes");
        assert_eq!(k.subs("n{1}"), "{sb}:subs:n{1}");
        assert_eq!(k.disc("r1"), "{sb}:disc:r1");
        assert_eq!(k.control, "{sb}:control");
        assert_eq!(k.channel_of("{sb}:control"), None);
    }
}
