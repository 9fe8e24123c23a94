//! The locks skor's administrative commands wait for: install's and
//! uninstall's own lock, and the tables they change. Every wait is bounded
//! by `lock_timeout`; when it runs out, the error names the sessions that
//! hold the lock, so nothing waits silently for a session that never ends.

use std::fmt::Write as _;
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::GenericClient;

/// How long install and uninstall wait for any one lock, unless told
/// otherwise (`--lock-timeout`).
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Key of the advisory lock that serialises installs while skor's schema
/// does not exist yet, as `hashtext('skor install')` computes it (any role
/// may take an advisory lock, so it is the fallback, not the rule).
const ADVISORY_KEY_SQL: &str = "pg_catalog.hashtext('skor install')::pg_catalog.int8";

/// The first statements of every install and uninstall transaction: the
/// pinned search_path (for the session: `skor sql`'s script may run
/// outside a transaction block, where a local setting would not last),
/// quiet notices, and the bound on every lock wait.
pub fn session_sql(timeout: Duration) -> String {
    format!(
        "SET search_path = pg_catalog, pg_temp;\n\
         SET LOCAL client_min_messages = warning;\n\
         SET LOCAL lock_timeout = '{}ms';\n",
        timeout.as_millis().max(1)
    )
}

/// Takes skor's install lock for the rest of the transaction. Once skor's
/// schema exists, the lock is on its event log, in a mode that conflicts
/// only with itself (and VACUUM), so captured writes and the daemons go on:
/// no role without UPDATE on skor's tables can take or hold it. Before the
/// first install, an advisory lock stands in; any role could hold that
/// one, and the wait for it ends after `timeout` with the holder's name.
pub async fn take_install_lock(
    client: &impl GenericClient,
    timeout: Duration,
) -> Result<(), LockError> {
    client.batch_execute(&session_sql(timeout)).await?;
    if !installed(client).await? {
        let key = format!("SELECT pg_catalog.pg_advisory_xact_lock({ADVISORY_KEY_SQL})");
        waiting(
            client,
            &key,
            "skor's install lock (an advisory lock)",
            timeout,
        )
        .await?;
        // Another install may have created the schema meanwhile.
        if !installed(client).await? {
            return Ok(());
        }
    }
    waiting(
        client,
        "LOCK TABLE skor.event_log IN SHARE UPDATE EXCLUSIVE MODE",
        "skor's install lock (on skor.event_log)",
        timeout,
    )
    .await
}

/// Whether skor's event log exists and belongs to this role (another
/// role's is refused by install's ownership check, which needs the
/// advisory lock to run).
async fn installed(client: &impl GenericClient) -> Result<bool, LockError> {
    Ok(client
        .query_one(
            "SELECT coalesce((SELECT c.relowner OPERATOR(pg_catalog.=) u.oid \
                                FROM pg_catalog.pg_class c \
                                JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace, \
                                     pg_catalog.pg_roles u \
                               WHERE n.nspname OPERATOR(pg_catalog.=) 'skor' \
                                 AND c.relname OPERATOR(pg_catalog.=) 'event_log' \
                                 AND u.rolname OPERATOR(pg_catalog.=) CURRENT_USER), false)",
            &[],
        )
        .await?
        .get(0))
}

/// Runs `statement` in a savepoint; if its lock wait timed out, rolls the
/// savepoint back and says who holds what it waited for.
async fn waiting(
    client: &impl GenericClient,
    statement: &str,
    what: &str,
    timeout: Duration,
) -> Result<(), LockError> {
    client.batch_execute("SAVEPOINT skor_lock").await?;
    match client.batch_execute(statement).await {
        Ok(()) => {
            client.batch_execute("RELEASE SAVEPOINT skor_lock").await?;
            Ok(())
        }
        Err(error) if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
            client
                .batch_execute("ROLLBACK TO SAVEPOINT skor_lock; RELEASE SAVEPOINT skor_lock")
                .await?;
            let holders = holders(client).await.unwrap_or_default();
            Err(LockError::Timeout(message(what, &holders, timeout)))
        }
        Err(error) => Err(error.into()),
    }
}

/// The sessions that hold a lock install or uninstall may wait for:
/// skor's advisory key, a table of skor's, or a table with a skor trigger
/// or in a publication, with their role, application, state and query.
pub async fn holders(client: &impl GenericClient) -> Result<Vec<String>, tokio_postgres::Error> {
    let sql = format!(
        "{SESSION_COLUMNS} \
           FROM pg_catalog.pg_locks l \
           JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) l.pid \
          WHERE l.granted AND l.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid() \
            AND ((l.locktype OPERATOR(pg_catalog.=) 'advisory' \
                  AND l.objsubid OPERATOR(pg_catalog.=) 1 \
                  AND l.classid::pg_catalog.int8 OPERATOR(pg_catalog.=) \
                      (({key} OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.&) 4294967295) \
                  AND l.objid::pg_catalog.int8 OPERATOR(pg_catalog.=) \
                      ({key} OPERATOR(pg_catalog.&) 4294967295)) \
              OR (l.locktype OPERATOR(pg_catalog.=) 'relation' \
                  AND l.database OPERATOR(pg_catalog.=) \
                      (SELECT d.oid FROM pg_catalog.pg_database d \
                        WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()) \
                  AND l.mode OPERATOR(pg_catalog.<>) 'AccessShareLock' \
                  AND (l.relation IN (SELECT c.oid FROM pg_catalog.pg_class c \
                                       WHERE c.relnamespace OPERATOR(pg_catalog.=) \
                                             pg_catalog.to_regnamespace('skor')) \
                       OR l.relation IN (SELECT t.tgrelid FROM pg_catalog.pg_trigger t \
                                          WHERE t.tgname OPERATOR(pg_catalog.~~) 'skor\\_%')))) \
          ORDER BY a.pid",
        key = ADVISORY_KEY_SQL
    );
    let mut seen = Vec::new();
    for row in client.query(&sql, &[]).await? {
        let text = session(&row);
        if !seen.contains(&text) {
            seen.push(text);
        }
    }
    Ok(seen)
}

/// The columns [`session`] reads, of `pg_stat_activity a`.
const SESSION_COLUMNS: &str = "SELECT a.pid, coalesce(a.usename::pg_catalog.text, '?'), \
        coalesce(a.application_name, ''), coalesce(a.state, '?'), \
        pg_catalog.left(coalesce(a.query, ''), 80)";

/// A session in words: `pid 42 (role app, application "psql", idle in
/// transaction, last query "...")`.
fn session(row: &tokio_postgres::Row) -> String {
    let (pid, user, application, state, query): (i32, String, String, String, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    let mut text = format!("pid {pid} (role {user}");
    if !application.is_empty() {
        let _ = write!(text, ", application {application:?}");
    }
    let _ = write!(text, ", {state}");
    if !query.is_empty() {
        let _ = write!(text, ", last query {query:?}");
    }
    text.push(')');
    text
}

/// The other sessions with a transaction that holds an xid: what
/// PostgreSQL waits for before it makes a logical replication slot.
pub async fn open_transactions(
    client: &impl GenericClient,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "{SESSION_COLUMNS} FROM pg_catalog.pg_stat_activity a \
                  WHERE a.backend_xid IS NOT NULL \
                    AND a.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid() \
                  ORDER BY a.pid"
            ),
            &[],
        )
        .await?;
    Ok(rows.iter().map(session).collect())
}

/// Says how long skor waited for `what` and who holds it.
pub fn message(what: &str, holders: &[String], timeout: Duration) -> String {
    let waited = format!("{:.1}", timeout.as_secs_f64());
    if holders.is_empty() {
        return format!(
            "waited {waited} s for {what}; another session holds it (see pg_locks), retry once it ends"
        );
    }
    let pids: Vec<&str> = holders
        .iter()
        .filter_map(|h| h.strip_prefix("pid ")?.split(' ').next())
        .collect();
    format!(
        "waited {waited} s for {what}, held by {}; end that session (SELECT pg_terminate_backend({})) or retry once it ends",
        holders.join(", "),
        pids.join("), pg_terminate_backend(")
    )
}

/// Why skor did not get a lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The wait ran out; the text names the holders.
    #[error("{0}")]
    Timeout(String),
    /// PostgreSQL refused a statement.
    #[error("{}", super::describe(.0))]
    Db(#[from] tokio_postgres::Error),
}
