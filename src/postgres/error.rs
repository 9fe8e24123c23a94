//! PostgreSQL errors in words for a log line: the server's own message when
//! there is one, never the connection string.

use std::time::Duration;

/// Why a connection could not be made, in words for the log.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(pub(super) String);

/// Why a statement or a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The server answered with an error, or the connection failed under
    /// the statement.
    #[error("{}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    /// A new connection could not be opened.
    #[error("{0}")]
    Connect(#[from] ConnectError),
    /// The server did not answer in time; the connection counts as lost.
    #[error("PostgreSQL did not answer in {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
}

impl PgError {
    /// The error with what skor was doing, for a log line.
    pub fn context(self, doing: &str) -> ContextError {
        ContextError {
            doing: doing.to_string(),
            error: self,
        }
    }

    /// Whether the connection is gone (rather than one statement failing).
    pub fn is_connection_lost(&self) -> bool {
        match self {
            PgError::Db(error) => error.is_closed() || error.as_db_error().is_none(),
            PgError::Connect(_) | PgError::Timeout(_) | PgError::Closed => true,
        }
    }
}

/// A [`PgError`] with what skor was doing when it happened.
#[derive(Debug, thiserror::Error)]
#[error("{doing}: {error}")]
pub struct ContextError {
    doing: String,
    #[source]
    error: PgError,
}

/// Describes a PostgreSQL error with the server's own words when there are
/// some; never includes the connection string.
pub fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!("{}: {}", db.severity(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        return text;
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
