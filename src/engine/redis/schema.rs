//! The schema of a Switchboard Redis: the function libraries in `migrations/`, the names
//! of the functions this build calls, and the version recorded in `<p>:schema`. [`apply_migrations`] brings Redis to
//! [`SCHEMA_VERSION`] under `<p>:migrate:lock` (at start, after a reconnect, and when a
//! function call finds its library gone); [`migrate`] is `switchboard migrate`. Talks to
//! Redis through any connection it is handed; knows nothing of channels or nodes beyond a
//! node id for the log.

use std::time::{Duration, Instant};

use redis::Value;

use super::conn::Conn;
use super::keys::Keys;
use super::resp::{query, value_array, value_string, CmdError};
use super::{RedisOptions, RedisStartError};
use crate::config::Settings;

/// The migrations this build knows, in order: (schema version, function library source).
/// Each library is named `switchboard_v<N>` and its functions `switchboard_v<N>_*`, because
/// Redis function names are global and two versions must be loadable side by side.
pub const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("../../../migrations/0001_functions.lua")),
    (2, include_str!("../../../migrations/0002_reads.lua")),
    (
        3,
        include_str!("../../../migrations/0003_idempotent_publish.lua"),
    ),
    (4, include_str!("../../../migrations/0004_lean_publish.lua")),
];

/// The highest schema version this build knows (the last of [`MIGRATIONS`]).
pub const SCHEMA_VERSION: u32 = 4;

// The functions this build calls, each from the library that brought it (every library of
// [`MIGRATIONS`] is loaded).
pub(super) const FN_PUBLISH: &str = "switchboard_v4_publish";
pub(super) const FN_PUBLISH_MANY: &str = "switchboard_v4_publish_many";
pub(super) const FN_HISTORY: &str = "switchboard_v4_history";
pub(super) const FN_READ: &str = "switchboard_v4_read";
pub(super) const FN_RANGE: &str = "switchboard_v4_range";
pub(super) const FN_PRESENCE_ADD: &str = "switchboard_v1_presence_add";
pub(super) const FN_PRESENCE_LIST: &str = "switchboard_v1_presence_list";
pub(super) const FN_NODE_BEAT: &str = "switchboard_v1_node_beat";
pub(super) const FN_LIVE_NODES: &str = "switchboard_v1_live_nodes";

/// How long the migration lock is held at most, should its holder die mid-way.
const LOCK_TTL_MS: u64 = 10_000;

/// Why migrations could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrateError {
    /// Redis holds a schema written by a newer Switchboard: this build refuses to touch it.
    #[error("redis schema version {found} is newer than version {known}, the highest this build knows; upgrade this node")]
    TooNew {
        /// The version found in `<p>:schema`.
        found: u32,
        /// [`SCHEMA_VERSION`].
        known: u32,
    },
    /// `<p>:schema` holds something that is not a version number: not ours to overwrite.
    #[error("cannot migrate redis: key {key} holds {value:?}, not a version number")]
    SchemaUnreadable {
        /// The schema key.
        key: String,
        /// What it holds.
        value: String,
    },
    /// Another node held the migration lock longer than this node would wait.
    #[error("cannot migrate redis: another node holds {key} for too long")]
    LockBusy {
        /// The lock key.
        key: String,
    },
    /// Redis could not be reached, did not answer in time, or refused a command.
    #[error("cannot migrate redis: {0}")]
    Redis(String),
}

impl From<CmdError> for MigrateError {
    fn from(e: CmdError) -> Self {
        match e {
            CmdError::Redis(e) => MigrateError::Redis(e.to_string()),
            CmdError::Timeout => MigrateError::Redis("redis did not answer in time".into()),
            CmdError::Reply(what) => MigrateError::Redis(format!("unexpected reply to {what}")),
            CmdError::Batch(why) => MigrateError::Redis(why),
        }
    }
}

/// The schema version recorded and the names of the Switchboard libraries loaded.
async fn schema_state(
    con: &mut Conn,
    keys: &Keys,
    limit: Duration,
) -> Result<(u32, Vec<String>), MigrateError> {
    let raw = query(redis::cmd("GET").arg(keys.schema()), con, limit).await?;
    let schema = match value_string(raw) {
        None => 0,
        Some(s) => match s.trim().parse::<u32>() {
            Ok(v) => v,
            Err(_) => {
                return Err(MigrateError::SchemaUnreadable {
                    key: keys.schema(),
                    value: s,
                })
            }
        },
    };
    // On a cluster each primary has its own libraries (FUNCTION LOAD reaches a primary and
    // its replicas only): a library counts as loaded when every primary has it.
    let list = redis::cmd("FUNCTION")
        .arg("LIST")
        .arg("LIBRARYNAME")
        .arg("switchboard_v*")
        .clone();
    let replies = match tokio::time::timeout(limit, con.on_every_primary(&list)).await {
        Ok(Ok(replies)) => replies,
        Ok(Err(e)) => return Err(CmdError::Redis(e).into()),
        Err(_) => return Err(CmdError::Timeout.into()),
    };
    let mut libs: Option<Vec<String>> = None;
    for reply in replies {
        let names = library_names(reply);
        libs = Some(match libs {
            None => names,
            Some(all) => all.into_iter().filter(|l| names.contains(l)).collect(),
        });
    }
    Ok((schema, libs.unwrap_or_default()))
}

/// Library names in a FUNCTION LIST reply (RESP2 arrays or RESP3 maps).
fn library_names(list: Value) -> Vec<String> {
    let mut names = Vec::new();
    for lib in value_array(list) {
        let mut fields = value_array(lib).into_iter();
        while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
            if value_string(k).as_deref() == Some("library_name") {
                if let Some(name) = value_string(v) {
                    names.push(name);
                }
            }
        }
    }
    names
}

fn library_name(version: u32) -> String {
    format!("switchboard_v{version}")
}

fn up_to_date(schema: u32, libs: &[String]) -> bool {
    schema >= SCHEMA_VERSION
        && MIGRATIONS
            .iter()
            .all(|(v, _)| libs.iter().any(|l| *l == library_name(*v)))
}

fn refuse_newer(schema: u32) -> Result<(), MigrateError> {
    if schema > SCHEMA_VERSION {
        return Err(MigrateError::TooNew {
            found: schema,
            known: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Brings Redis to [`SCHEMA_VERSION`]: refuses a newer schema, returns at once when every
/// library is loaded and the schema recorded, and otherwise applies what is missing under
/// `<p>:migrate:lock`, so nodes starting together apply each migration once. A library that
/// is missing although the schema says it was applied (Redis came back empty, or FUNCTION
/// FLUSH) is loaded again.
pub(super) async fn apply_migrations(
    con: &mut Conn,
    keys: &Keys,
    node: &str,
    limit: Duration,
    lock_wait: Duration,
) -> Result<u32, MigrateError> {
    let deadline = Instant::now() + lock_wait;
    let token = format!("{node}:{}", uuid::Uuid::new_v4().simple());
    loop {
        let (schema, libs) = schema_state(con, keys, limit).await?;
        refuse_newer(schema)?;
        if up_to_date(schema, &libs) {
            return Ok(SCHEMA_VERSION);
        }
        let got = query(
            redis::cmd("SET")
                .arg(keys.lock())
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_TTL_MS),
            con,
            limit,
        )
        .await?;
        if got != Value::Nil {
            let result = migrate_locked(con, keys, node, limit).await;
            // Release only our own lock: compare and delete in one step.
            let release = redis::cmd("EVAL")
                .arg("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")
                .arg(1)
                .arg(keys.lock())
                .arg(&token)
                .clone();
            if query(&release, con, limit).await.is_err() {
                log::warn!("could not release the migration lock; it expires in {LOCK_TTL_MS} ms");
            }
            return result;
        }
        if Instant::now() >= deadline {
            return Err(MigrateError::LockBusy { key: keys.lock() });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn migrate_locked(
    con: &mut Conn,
    keys: &Keys,
    node: &str,
    limit: Duration,
) -> Result<u32, MigrateError> {
    // Read again: another node may have finished between our check and our lock.
    let (schema, libs) = schema_state(con, keys, limit).await?;
    refuse_newer(schema)?;
    for (version, source) in MIGRATIONS {
        let name = library_name(*version);
        if *version <= schema && libs.contains(&name) {
            continue;
        }
        query(
            redis::cmd("FUNCTION")
                .arg("LOAD")
                .arg("REPLACE")
                .arg(*source),
            con,
            limit,
        )
        .await?;
        let entry = format!("{version} {name} node={node}");
        query(
            redis::cmd("RPUSH").arg(keys.migration_log()).arg(entry),
            con,
            limit,
        )
        .await?;
        log::info!("redis migration applied version={version} library={name} node={node}");
    }
    if schema < SCHEMA_VERSION {
        query(
            redis::cmd("SET").arg(keys.schema()).arg(SCHEMA_VERSION),
            con,
            limit,
        )
        .await?;
    }
    Ok(SCHEMA_VERSION)
}

/// Applies the migrations in `migrations/` to the Redis of `settings` (for
/// `switchboard migrate`); returns the schema version Redis is at afterwards.
pub async fn migrate(settings: &Settings) -> Result<u32, RedisStartError> {
    let opts = RedisOptions::from_settings(settings, "migrate-cli");
    let unreachable = |reason: String| RedisStartError::Unreachable {
        url: opts.shown_url(),
        reason,
    };
    let mut con = tokio::time::timeout(opts.start_timeout, super::connect(&opts, true))
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| match e {
            RedisStartError::Unreachable { reason, .. } => unreachable(reason),
            other => other,
        })?;
    let version = apply_migrations(
        &mut con,
        &opts.keys(),
        &opts.node_id,
        opts.command_timeout,
        opts.lock_wait,
    )
    .await?;
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_names_are_read_from_function_list() {
        let s = |t: &str| Value::BulkString(t.as_bytes().to_vec());
        let list = Value::Array(vec![Value::Array(vec![
            s("library_name"),
            s("switchboard_v1"),
            s("engine"),
            s("LUA"),
            s("functions"),
            Value::Array(vec![]),
        ])]);
        assert_eq!(
            library_names(list.clone()),
            vec!["switchboard_v1".to_string()]
        );
        let all: Vec<String> = MIGRATIONS.iter().map(|(v, _)| library_name(*v)).collect();
        assert!(up_to_date(SCHEMA_VERSION, &all));
        assert!(
            !up_to_date(SCHEMA_VERSION, &library_names(list)),
            "a missing library is applied"
        );
        assert!(
            !up_to_date(SCHEMA_VERSION, &[]),
            "a flushed library is re-applied"
        );
        assert!(!up_to_date(SCHEMA_VERSION - 1, &all));
    }

    #[test]
    fn migrations_are_numbered_and_named() {
        for (i, (v, src)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v as usize, i + 1);
            assert!(src.starts_with(&format!("#!lua name={}\n", library_name(*v))));
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.0), Some(SCHEMA_VERSION));
    }

    #[test]
    fn called_functions_are_registered_by_the_library_their_name_gives() {
        for f in [
            FN_PUBLISH,
            FN_PUBLISH_MANY,
            FN_HISTORY,
            FN_READ,
            FN_RANGE,
            FN_PRESENCE_ADD,
            FN_PRESENCE_LIST,
            FN_NODE_BEAT,
            FN_LIVE_NODES,
        ] {
            let source = MIGRATIONS
                .iter()
                .find(|(v, _)| f.starts_with(&format!("{}_", library_name(*v))))
                .map(|(_, source)| *source)
                .unwrap_or_else(|| panic!("{f}: no migration's library"));
            assert!(source.contains(&format!("'{f}'")), "{f} is registered");
        }
    }

    #[test]
    fn only_a_newer_schema_is_refused() {
        assert_eq!(refuse_newer(SCHEMA_VERSION), Ok(()));
        assert_eq!(refuse_newer(0), Ok(()));
        let err = refuse_newer(SCHEMA_VERSION + 1).expect_err("refused");
        assert_eq!(
            err,
            MigrateError::TooNew {
                found: SCHEMA_VERSION + 1,
                known: SCHEMA_VERSION
            }
        );
        let shown = err.to_string();
        assert!(shown.contains(&(SCHEMA_VERSION + 1).to_string()), "{shown}");
    }
}
