//! Other database roles against skor: a role that may only CONNECT, and one
//! that may also CREATE in `public`, try each way to read, forge, stop or
//! break capture. Every attempt fails, and the application's writes still
//! succeed and arrive exactly once.

use crate::common::{connect, server_dsn, Hook, Running, TestDb, PATIENCE};
use tokio_postgres::{AsyncMessage, Client};

/// The roles of one test (roles are cluster-wide, so their names are the
/// test database's), and the database they live in.
struct Fixture {
    db: TestDb,
    /// Owns skor's objects and the captured tables; installs and runs skor.
    owner: String,
    /// The application: writes the captured tables, nothing else.
    writer: String,
    /// May only CONNECT.
    mallory: String,
    /// May CREATE in `public`, which is on the writer's search_path.
    creator: String,
    /// Runs the daemon with the README's grants and nothing else.
    daemon: String,
}

impl Fixture {
    async fn new() -> Self {
        let db = TestDb::new().await;
        let suffix = db.name.trim_start_matches("skor_test_").to_string();
        let fixture = Self {
            owner: format!("skor_owner_{suffix}"),
            writer: format!("app_writer_{suffix}"),
            mallory: format!("mallory_{suffix}"),
            creator: format!("creator_{suffix}"),
            daemon: format!("skor_daemon_{suffix}"),
            db,
        };
        let Fixture {
            db,
            owner,
            writer,
            mallory,
            creator,
            ..
        } = &fixture;
        db.exec(&format!(
            "CREATE ROLE {owner} LOGIN; CREATE ROLE {writer} LOGIN; \
             CREATE ROLE {mallory} LOGIN; CREATE ROLE {creator} LOGIN; \
             GRANT CREATE ON DATABASE {db} TO {owner}; \
             GRANT CREATE ON SCHEMA public TO {creator}; \
             CREATE TABLE orders (id int PRIMARY KEY, status text, note text); \
             CREATE TABLE ledger (id int PRIMARY KEY, amount int); \
             ALTER TABLE orders OWNER TO {owner}; ALTER TABLE ledger OWNER TO {owner}; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON orders, ledger TO {writer};",
            db = db.name
        ))
        .await;
        fixture
    }

    fn dsn(&self, role: &str) -> String {
        format!("{} user={role} dbname={}", server_dsn(), self.db.name)
    }

    async fn as_role(&self, role: &str) -> Client {
        connect(&self.dsn(role)).await
    }

    /// `orders` in notify mode (with a column list, so the trigger calls
    /// `cardinality`), `ledger` in durable mode, both to `hook`; the daemon
    /// connects as the owner.
    fn config(&self, hook: &Hook) -> String {
        self.config_as(hook, &self.owner)
    }

    /// The same config, for a daemon connecting as `role`.
    fn config_as(&self, hook: &Hook, role: &str) -> String {
        format!(
            "[source]\ndsn = \"{dsn}\"\nchannels = [\"skor\", \"audit\"]\n\
             [[table]]\nname = \"orders\"\ncolumns = [\"id\", \"status\", \"note\"]\n\
             [[table]]\nname = \"ledger\"\nmode = \"durable\"\n\
             [sink.hook]\ntype = \"webhook\"\nurl = \"{url}\"\n\
             [sink.audit]\ntype = \"webhook\"\nurl = \"{url}/audit\"\n\
             [[route]]\nchannel = \"skor\"\nsinks = [\"hook\"]\n\
             [[route]]\nchannel = \"audit\"\nsinks = [\"audit\"]\n",
            dsn = self.dsn(role),
            url = hook.url(),
        )
    }

    async fn install(&self, config: &str) -> Result<(), String> {
        let config = skor::Config::from_toml(config, "test.toml").expect("valid config");
        let mut client = self.as_role(&self.owner).await;
        skor::install::install(&mut client, &config)
            .await
            .map_err(|e| e.to_string())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Roles own objects in the database: it goes first.
        let mut statements = vec![format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.db.name
        )];
        for role in [
            &self.owner,
            &self.writer,
            &self.mallory,
            &self.creator,
            &self.daemon,
        ] {
            statements.push(format!("DROP ROLE IF EXISTS {role}"));
        }
        crate::common::on_postgres_db(statements);
    }
}

/// Runs `sql` and returns PostgreSQL's error message; panics if it worked.
async fn refused(client: &Client, sql: &str) -> String {
    match client.batch_execute(sql).await {
        Ok(()) => panic!("an attacker's statement succeeded: {sql}"),
        Err(e) => e
            .as_db_error()
            .expect("a database error")
            .message()
            .to_string(),
    }
}

/// A connection that LISTENs on `channels` and collects what it hears.
async fn eavesdrop(
    dsn: &str,
    channels: &[&str],
) -> (
    Client,
    tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) {
    let (client, mut connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) =
            futures_util::future::poll_fn(|cx| connection.poll_message(cx)).await
        {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    let listen: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
    client.batch_execute(&listen).await.unwrap();
    (client, rx)
}

#[tokio::test]
async fn a_role_that_can_only_connect_cannot_forge_break_or_read_durable_events() {
    let fixture = Fixture::new().await;
    let hook = Hook::start().await;
    let config = fixture.config(&hook);
    fixture.install(&config).await.expect("install");
    let daemon = Running::start(&config).await;
    let mallory = fixture.as_role(&fixture.mallory).await;
    let writer = fixture.as_role(&fixture.writer).await;

    // Make writes to a durable table fail by taking the ids the trigger
    // will use; forge events and dead letters; delete or read the log.
    let attacks = [
        "INSERT INTO skor.event_log (id, channel, schema_name, table_name, op, part, payload) \
         VALUES (nextval('skor.event_log_id_seq') + 1, 'skor', 'public', 'ledger', 'INSERT', 0, \
                 '{\"table\" : \"ledger\", \"schema\" : \"public\", \"op\" : \"INSERT\", \"data\" : {\"id\":666}}')",
        "SELECT nextval('skor.event_log_id_seq')",
        "SELECT setval('skor.event_log_id_seq', 1000000)",
        "UPDATE skor.event_log SET state = 'dead', last_error = 'forged'",
        "DELETE FROM skor.event_log",
        "SELECT payload FROM skor.event_log",
        "INSERT INTO skor.oversized_payload (id, payload) VALUES (1, '{}')",
        "SELECT nextval('skor.oversized_payload_id_seq')",
        "SELECT payload FROM skor.oversized_payload",
        "SELECT skor.pick('{\"id\":1}', ARRAY['id'])",
        "CREATE TABLE skor.squat (id int)",
    ];
    for attack in attacks {
        let message = refused(&mallory, attack).await;
        assert!(message.contains("permission denied"), "{attack}: {message}");
    }

    // Even the owner cannot write a row the daemon could not deliver: an
    // unknown op, or a partition no daemon claims.
    for (bad, constraint) in [
        ("'TRUNCATE', 0", "event_log_valid"),
        ("'INSERT', 64", "event_log_valid"),
    ] {
        let sql = format!(
            "INSERT INTO skor.event_log (channel, schema_name, table_name, op, part, payload) \
             VALUES ('skor', 'public', 'ledger', {bad}, '{{}}')"
        );
        let message = refused(&fixture.db.client, &sql).await;
        assert!(message.contains(constraint), "{sql}: {message}");
    }

    // Listening on the wake-up channel shows that something changed, not what.
    let (_ears, mut heard) = eavesdrop(&fixture.dsn(&fixture.mallory), &["skor_event_log"]).await;
    writer
        .batch_execute(
            "INSERT INTO ledger VALUES (1, 100); UPDATE ledger SET amount = 150 WHERE id = 1; \
             DELETE FROM ledger WHERE id = 1;",
        )
        .await
        .expect("the application's writes succeed");
    let bodies: Vec<String> = hook.wait_for(3).await.into_iter().map(|r| r.body).collect();
    assert_eq!(
        bodies,
        [
            r#"{"table" : "ledger", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"amount":100}}"#,
            r#"{"table" : "ledger", "schema" : "public", "op" : "UPDATE", "data" : {"id":1,"amount":150}}"#,
            r#"{"table" : "ledger", "schema" : "public", "op" : "DELETE", "data" : {"id":1,"amount":150}}"#,
        ]
    );
    let (channel, payload) = tokio::time::timeout(PATIENCE, heard.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((channel.as_str(), payload.as_str()), ("skor_event_log", ""));
    daemon.stop().await;
    assert_eq!(
        hook.count(),
        3,
        "no forged event arrived: {:#?}",
        hook.bodies()
    );
}

#[tokio::test]
async fn forged_references_cannot_take_or_redirect_an_oversized_payload() {
    let fixture = Fixture::new().await;
    let hook = Hook::start().await;
    let config = fixture.config(&hook);
    fixture.install(&config).await.expect("install");
    let daemon = Running::start(&config).await;
    let mallory = fixture.as_role(&fixture.mallory).await;
    let writer = fixture.as_role(&fixture.writer).await;
    let (_ears, mut heard) = eavesdrop(&fixture.dsn(&fixture.mallory), &["skor"]).await;

    // A role that can LISTEN sees the reference, token included, and sends
    // it on to the `audit` channel, whose sink it hopes to reach, as it is
    // and with the channel rewritten; and guesses at ids without a token.
    let note = "x".repeat(9000);
    writer
        .execute("INSERT INTO orders VALUES (1, 'big', $1)", &[&note])
        .await
        .expect("an oversized row commits");
    let (_, reference) = tokio::time::timeout(PATIENCE, heard.recv())
        .await
        .unwrap()
        .unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&reference).unwrap();
    assert_eq!(parsed["channel"], "skor", "{reference}");
    let rewritten = reference.replace("\"skor\"", "\"audit\"");
    for (channel, forged) in [
        ("audit", reference.as_str()),
        ("audit", rewritten.as_str()),
        ("skor", r#"{"skor_ref" : 1}"#),
        (
            "skor",
            r#"{"skor_ref" : 1, "channel" : "skor", "token" : "guess"}"#,
        ),
    ] {
        mallory
            .execute("SELECT pg_notify($1, $2)", &[&channel, &forged])
            .await
            .unwrap();
    }
    writer
        .batch_execute("INSERT INTO orders VALUES (2, 'small', 'n')")
        .await
        .unwrap();
    hook.wait_for(2).await;
    daemon.stop().await;
    let requests = hook.requests();
    let paths_and_ids: Vec<(bool, i64)> = requests
        .iter()
        .map(|r| (r.body.contains("\"big\""), crate::common::row_id(&r.body)))
        .collect();
    assert_eq!(
        paths_and_ids,
        [(true, 1), (false, 2)],
        "the oversized event arrived once, on its own route, and nothing forged did"
    );
    assert_eq!(
        fixture
            .db
            .client
            .query_one("SELECT count(*) FROM skor.oversized_payload", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        0
    );
}

#[tokio::test]
async fn functions_created_in_public_do_not_run_inside_captured_writes() {
    let fixture = Fixture::new().await;
    let hook = Hook::start().await;
    let config = fixture.config(&hook);
    fixture.install(&config).await.expect("install");
    let daemon = Running::start(&config).await;

    // Better matches than pg_catalog's for the calls skor's triggers make,
    // in a schema on every writer's search_path: they would run as the
    // writer, inside its transaction.
    let creator = fixture.as_role(&fixture.creator).await;
    creator
        .batch_execute(
            "CREATE TABLE public.pwned (who text, what text); \
             GRANT INSERT ON public.pwned TO PUBLIC; \
             CREATE FUNCTION public.cardinality(text[]) RETURNS int LANGUAGE sql AS \
               $$ INSERT INTO public.pwned VALUES (current_user, 'cardinality') RETURNING 0 $$; \
             CREATE FUNCTION public.row_to_json(public.orders) RETURNS json LANGUAGE sql AS \
               $$ INSERT INTO public.pwned VALUES (current_user, 'row_to_json') RETURNING '{}'::json $$; \
             CREATE FUNCTION public.row_to_json(public.ledger) RETURNS json LANGUAGE sql AS \
               $$ INSERT INTO public.pwned VALUES (current_user, 'row_to_json') RETURNING '{}'::json $$;",
        )
        .await
        .unwrap();

    let writer = fixture.as_role(&fixture.writer).await;
    writer
        .batch_execute(
            "INSERT INTO orders VALUES (1, 'new', 'n'); UPDATE orders SET status = 'paid'; \
             INSERT INTO ledger VALUES (7, 70); DELETE FROM orders;",
        )
        .await
        .expect("the application's writes succeed");
    let mut bodies: Vec<String> = hook.wait_for(4).await.into_iter().map(|r| r.body).collect();
    daemon.stop().await;
    bodies.sort();
    assert_eq!(
        bodies,
        [
            r#"{"table" : "ledger", "schema" : "public", "op" : "INSERT", "data" : {"id":7,"amount":70}}"#,
            r#"{"table" : "orders", "schema" : "public", "op" : "DELETE", "data" : {"id":1,"status":"paid","note":"n"}}"#,
            r#"{"table" : "orders", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"status":"new","note":"n"}}"#,
            r#"{"table" : "orders", "schema" : "public", "op" : "UPDATE", "data" : {"id":1,"status":"paid","note":"n"}}"#,
        ]
    );
    let pwned: Vec<(String, String)> = fixture
        .db
        .client
        .query("SELECT who, what FROM public.pwned", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(pwned, [], "no planted function ran");
}

#[tokio::test]
async fn install_refuses_a_skor_schema_that_another_role_owns() {
    let fixture = Fixture::new().await;
    let hook = Hook::start().await;
    // The creator got CREATE on the database too, and squats the schema.
    fixture
        .db
        .exec(&format!(
            "GRANT CREATE ON DATABASE {} TO {}",
            fixture.db.name, fixture.creator
        ))
        .await;
    let creator = fixture.as_role(&fixture.creator).await;
    creator
        .batch_execute(
            "CREATE SCHEMA skor; \
             CREATE FUNCTION skor.pick(json, text[]) RETURNS json LANGUAGE sql AS $$ SELECT '{}'::json $$;",
        )
        .await
        .unwrap();
    let error = fixture
        .install(&fixture.config(&hook))
        .await
        .expect_err("install refuses");
    assert!(
        error.contains(&format!(
            "schema skor belongs to role {}, not to {}",
            fixture.creator, fixture.owner
        )),
        "{error}"
    );
    let triggers: i64 = fixture
        .db
        .client
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'skor%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0, "nothing was installed");

    // A schema of skor's owner holding another role's object is refused too,
    // naming the object.
    fixture
        .db
        .exec(&format!(
            "DROP SCHEMA skor CASCADE; CREATE SCHEMA skor AUTHORIZATION {owner}; \
             CREATE TABLE skor.event_log (id int); ALTER TABLE skor.event_log OWNER TO {creator};",
            owner = fixture.owner,
            creator = fixture.creator
        ))
        .await;
    let error = fixture
        .install(&fixture.config(&hook))
        .await
        .expect_err("install refuses");
    assert!(
        error.contains(&format!(
            "table skor.event_log belongs to role {}, not to {}",
            fixture.creator, fixture.owner
        )),
        "{error}"
    );
}

/// The GRANTs docs/security.md gives a daemon role of its own, for `role`.
fn documented_daemon_grants(role: &str) -> String {
    let readme = include_str!("../../docs/security.md");
    let section = &readme[readme
        .find("**The daemon runs with least privilege.**")
        .expect("docs/security.md has the daemon's grants")..];
    let block = &section[section.find("```sql").unwrap() + "```sql".len()..];
    let block = &block[..block.find("```").unwrap()];
    block
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with("CREATE ROLE") && !line.starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("skor_daemon", role)
}

#[tokio::test]
async fn a_daemon_role_with_only_the_readmes_grants_delivers_every_mode() {
    let fixture = Fixture::new().await;
    let hook = Hook::start().await;
    fixture
        .install(&fixture.config(&hook))
        .await
        .expect("install");
    let grants = documented_daemon_grants(&fixture.daemon);
    assert!(grants.contains("GRANT"), "{grants}");
    fixture
        .db
        .exec(&format!("CREATE ROLE {} LOGIN; {grants}", fixture.daemon))
        .await;
    let daemon = Running::start(&fixture.config_as(&hook, &fixture.daemon)).await;
    let writer = fixture.as_role(&fixture.writer).await;
    let note = "x".repeat(9000);
    writer
        .execute("INSERT INTO orders VALUES (1, 'big', $1)", &[&note])
        .await
        .unwrap();
    writer
        .batch_execute("INSERT INTO ledger VALUES (1, 10); UPDATE ledger SET amount = 20;")
        .await
        .unwrap();
    let requests = hook.wait_for(3).await;
    daemon.stop().await;
    let mut seen: Vec<(String, i64)> = requests
        .iter()
        .map(|r| {
            let event: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            (
                format!(
                    "{} {}",
                    event["table"].as_str().unwrap(),
                    event["op"].as_str().unwrap()
                ),
                event["data"]["id"].as_i64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("ledger INSERT".to_string(), 1),
            ("ledger UPDATE".to_string(), 1),
            ("orders INSERT".to_string(), 1)
        ]
    );
    // The daemon's role can do what it needs and no more.
    let as_daemon = fixture.as_role(&fixture.daemon).await;
    for attack in [
        "INSERT INTO skor.event_log (channel, schema_name, table_name, op, part, payload) \
         VALUES ('skor', 'public', 'ledger', 'INSERT', 0, '{}')",
        "CREATE TABLE skor.squat (id int)",
        "DROP TRIGGER skor_insert ON ledger",
    ] {
        refused(&as_daemon, attack).await;
    }
    let left: i64 = fixture
        .db
        .client
        .query_one("SELECT count(*) FROM skor.event_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the daemon's role finished every event");
}
