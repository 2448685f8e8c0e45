//! Why a node could not start or migrate, as one enum whose variants are what `main` turns
//! into exit codes (documented in README.md, "Exit codes"). Request paths have their own
//! errors: `protocol::ApiError` for HTTP, `engine::EngineError` for the engine.

use crate::engine::redis::{MigrateError, RedisStartError};

/// Why `switchboard` (or `switchboard migrate`) stopped before serving.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The configuration is unusable: a bad key, an unreadable TLS file, a key that does
    /// not verify tokens (exit code 2).
    #[error("configuration error: {0}")]
    Config(String),
    /// The Redis engine could not start (exit code by cause, see [`StartupError::exit_code`]).
    #[error("engine: {0}")]
    Engine(#[from] RedisStartError),
    /// The metrics registry refused a metric: a bug of this build (exit code 1).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Binding or serving failed (exit code 1).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl StartupError {
    /// The process exit code: 2 for configuration, 3 for a Redis schema this build must not
    /// touch (newer, or not ours), 4 for a Redis that cannot be reached or migrated, 1 for
    /// the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartupError::Config(_) | StartupError::Engine(RedisStartError::BadUrl(_)) => 2,
            StartupError::Engine(RedisStartError::Migrate(
                MigrateError::TooNew { .. } | MigrateError::SchemaUnreadable { .. },
            )) => 3,
            StartupError::Engine(
                RedisStartError::Unreachable { .. }
                | RedisStartError::Migrate(MigrateError::LockBusy { .. } | MigrateError::Redis(_)),
            ) => 4,
            StartupError::Engine(RedisStartError::Client(_))
            | StartupError::Metrics(_)
            | StartupError::Io(_) => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_has_its_exit_code() {
        let too_new = MigrateError::TooNew { found: 9, known: 1 };
        let cases = [
            (StartupError::Config("x".into()), 2),
            (RedisStartError::BadUrl("x".into()).into(), 2),
            (RedisStartError::Migrate(too_new).into(), 3),
            (
                RedisStartError::Migrate(MigrateError::SchemaUnreadable {
                    key: "k".into(),
                    value: "v".into(),
                })
                .into(),
                3,
            ),
            (
                RedisStartError::Unreachable {
                    url: "redis://x".into(),
                    reason: "refused".into(),
                }
                .into(),
                4,
            ),
            (
                RedisStartError::Migrate(MigrateError::Redis("x".into())).into(),
                4,
            ),
            (std::io::Error::other("bind").into(), 1),
        ];
        for (e, code) in cases {
            assert_eq!(e.exit_code(), code, "{e}");
        }
    }
}
