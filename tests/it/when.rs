//! `when`: a condition compiled into the triggers' WHEN clause (notify and
//! durable mode) or the publication's row filter (wal mode). Which changes
//! arrive, what install says of a condition PostgreSQL rejects, and that
//! another role's functions in `public` cannot slip into a condition.

use crate::common::wal::WalDb;
use crate::common::{config, connect, hook_config, is_row, Hook, Running, TestDb, TestRoles};

const ORDERS: &str = "CREATE TABLE orders (id int PRIMARY KEY, status text, total int);";

/// The changes every trigger-mode test makes, and what a per-operation
/// `when` lets through.
const CHANGES: &str = "INSERT INTO orders VALUES (1, 'new', 5);\
     INSERT INTO orders VALUES (2, 'new', 50);\
     UPDATE orders SET total = 60 WHERE id = 2;\
     UPDATE orders SET status = 'paid' WHERE id = 2;\
     UPDATE orders SET id = 3, status = 'shipped' WHERE id = 2;\
     UPDATE orders SET id = 4 WHERE id = 3;\
     DELETE FROM orders WHERE id = 1;\
     UPDATE orders SET status = 'cancelled' WHERE id = 4;\
     DELETE FROM orders WHERE id = 4;";

/// A change committed after the others that every condition here lets
/// through: the barrier behind which nothing else may arrive.
const BARRIER: &str = "INSERT INTO orders VALUES (100, 'paid', 100)";
const BARRIER_ID: i64 = 100;

const PER_OP: &str = "when = { insert = \"NEW.total > 10 -- big ones\", \
     update = \"NEW.status IS DISTINCT FROM OLD.status\", \
     delete = \"OLD.status = 'cancelled'\" }";

fn per_op_expected() -> Vec<&'static str> {
    vec![
        r#"{"table" : "orders", "schema" : "public", "op" : "INSERT", "data" : {"id":2,"status":"new","total":50}}"#,
        r#"{"table" : "orders", "schema" : "public", "op" : "UPDATE", "data" : {"id":2,"status":"paid","total":60}}"#,
        r#"{"table" : "orders", "schema" : "public", "op" : "UPDATE", "data" : {"id":3,"status":"shipped","total":60}, "old_key" : {"id":2}}"#,
        r#"{"table" : "orders", "schema" : "public", "op" : "UPDATE", "data" : {"id":4,"status":"cancelled","total":60}}"#,
        r#"{"table" : "orders", "schema" : "public", "op" : "DELETE", "data" : {"id":4,"status":"cancelled","total":60}}"#,
    ]
}

/// Installs `table` in `mode`, makes CHANGES, and returns what was written
/// to the event log before the daemon ran (durable) and the bodies the
/// webhook received.
async fn run_changes(mode: &str, table: &str, expected: usize) -> (i64, Vec<String>) {
    let db = TestDb::new().await;
    db.exec(ORDERS).await;
    let hook = Hook::start().await;
    let config = hook_config(
        &db,
        &format!("name = \"orders\"\nmode = \"{mode}\"\n{table}"),
        &hook,
        "max_in_flight = 1",
    );
    crate::common::install(&db, &config).await;
    let skor = if mode == "notify" {
        Some(Running::start(&config).await)
    } else {
        None
    };
    db.exec(CHANGES).await;
    let logged = if mode == "durable" {
        db.client
            .query_one("SELECT count(*) FROM skor.event_log", &[])
            .await
            .unwrap()
            .get(0)
    } else {
        0
    };
    let skor = match skor {
        Some(skor) => skor,
        None => Running::start(&config).await,
    };
    // Nothing more comes: one lane (max_in_flight = 1) delivers in commit
    // order, so whatever else CHANGES let through arrives before a row
    // committed after them that every condition here lets through.
    let mut bodies: Vec<String> = hook
        .barrier(db.exec(BARRIER), |body| is_row(body, BARRIER_ID))
        .await
        .into_iter()
        .map(|r| r.body)
        .collect();
    assert_eq!(bodies.len(), expected + 1, "{bodies:#?}");
    bodies.pop();
    skor.stop().await;
    (logged, bodies)
}

#[tokio::test]
async fn notify_mode_sends_only_the_changes_that_meet_their_operations_condition() {
    let (_, bodies) = run_changes("notify", PER_OP, 5).await;
    assert_eq!(bodies, per_op_expected());
}

#[tokio::test]
async fn durable_mode_writes_only_the_changes_that_meet_their_operations_condition() {
    let (logged, bodies) = run_changes("durable", PER_OP, 5).await;
    assert_eq!(logged, 5, "a change that does not match writes nothing");
    assert_eq!(bodies, per_op_expected());
}

#[tokio::test]
async fn one_string_applies_to_every_captured_operation() {
    let (_, bodies) = run_changes(
        "notify",
        "ops = [\"INSERT\", \"UPDATE\"]\nwhen = \"NEW.total > 10 AND NEW.status <> 'cancelled'\"",
        5,
    )
    .await;
    assert_eq!(
        bodies,
        [
            r#"{"table" : "orders", "schema" : "public", "op" : "INSERT", "data" : {"id":2,"status":"new","total":50}}"#,
            r#"{"table" : "orders", "schema" : "public", "op" : "UPDATE", "data" : {"id":2,"status":"new","total":60}}"#,
            r#"{"table" : "orders", "schema" : "public", "op" : "UPDATE", "data" : {"id":2,"status":"paid","total":60}}"#,
            r#"{"table" : "orders", "schema" : "public", "op" : "UPDATE", "data" : {"id":3,"status":"shipped","total":60}, "old_key" : {"id":2}}"#,
            r#"{"table" : "orders", "schema" : "public", "op" : "UPDATE", "data" : {"id":4,"status":"shipped","total":60}, "old_key" : {"id":3}}"#,
        ]
    );
}

async fn install_error(db: &TestDb, table: &str) -> String {
    let config = config(db, &format!("[[table]]\nname = \"orders\"\n{table}\n"));
    let config = skor::Config::from_toml(&config, "test.toml").expect("valid config");
    let mut client = connect(&db.dsn()).await;
    skor::install::install(&mut client, &config)
        .await
        .expect_err("install refuses")
        .to_string()
}

#[tokio::test]
async fn install_names_the_table_and_key_of_a_condition_postgresql_rejects() {
    let db = TestDb::new().await;
    db.exec(ORDERS).await;
    assert_eq!(
        install_error(
            &db,
            "when = { update = \"NEW.stauts IS DISTINCT FROM OLD.status\" }"
        )
        .await,
        "table public.orders: when.update: column new.stauts does not exist"
    );
    assert_eq!(
        install_error(&db, "when = \"NEW.total > 10\"").await,
        "table public.orders: when: DELETE trigger's WHEN condition cannot reference NEW values \
         (as the DELETE trigger's condition; where a condition fits some operations only, give one \
         per operation: when = { insert = \"...\", update = \"...\", delete = \"...\" })"
    );
    assert_eq!(
        install_error(&db, "when = { insert = \"NEW.total\" }").await,
        "table public.orders: when.insert: argument of WHEN must be type boolean, not type integer"
    );
    // Nothing was installed.
    let installed: bool = db
        .client
        .query_one("SELECT to_regnamespace('skor') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!installed);
}

/// A role that may create functions in `public` shadows `lower(text)` with
/// a `lower(varchar)` that fails: without the pinned search_path, an
/// installer whose search_path holds `public` would compile it into the
/// trigger, and every matching write would fail (or run that role's code).
#[tokio::test]
async fn another_roles_function_in_public_cannot_enter_a_condition() {
    let db = TestDb::new().await;
    let mallory = format!("skor_mallory_{:08x}", rand::random::<u32>());
    let _roles = TestRoles::create(&db, std::slice::from_ref(&mallory)).await;
    db.exec(&format!(
        "CREATE TABLE orders (id int PRIMARY KEY, status varchar(20), total int);\
         GRANT CREATE ON SCHEMA public TO {mallory};\
         SET ROLE {mallory};\
         CREATE FUNCTION public.lower(varchar) RETURNS text LANGUAGE plpgsql AS \
           $$BEGIN RAISE EXCEPTION 'hijacked'; END$$;\
         RESET ROLE;"
    ))
    .await;
    // The attack is real: with `public` on the path, lower(varchar) is hers.
    let hijacked = db
        .client
        .batch_execute("SELECT lower('PAID'::varchar)")
        .await
        .unwrap_err();
    assert!(format!("{hijacked:?}").contains("hijacked"));

    let hook = Hook::start().await;
    let config = hook_config(
        &db,
        "name = \"orders\"\nops = [\"UPDATE\"]\nwhen = \"lower(NEW.status) = 'paid'\"",
        &hook,
        "",
    );
    let search_path: String = db
        .client
        .query_one("SHOW search_path", &[])
        .await
        .unwrap()
        .get(0);
    assert!(search_path.contains("public"), "{search_path}");
    crate::common::install(&db, &config).await;
    let definition: String = db
        .client
        .query_one(
            "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'skor_update'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !definition.contains("public.lower"),
        "compiled with pg_catalog.lower: {definition}"
    );
    let skor = Running::start(&config).await;
    db.exec(
        "INSERT INTO orders VALUES (1, 'new', 1);\
         UPDATE orders SET status = 'PAID' WHERE id = 1;\
         UPDATE orders SET total = 2 WHERE id = 1;\
         UPDATE orders SET status = 'open' WHERE id = 1;",
    )
    .await;
    let bodies: Vec<String> = hook.wait_for(2).await.into_iter().map(|r| r.body).collect();
    assert_eq!(
        bodies,
        [
            r#"{"table" : "orders", "schema" : "public", "op" : "UPDATE", "data" : {"id":1,"status":"PAID","total":1}}"#,
            r#"{"table" : "orders", "schema" : "public", "op" : "UPDATE", "data" : {"id":1,"status":"PAID","total":2}}"#,
        ]
    );
    skor.stop().await;
}

#[tokio::test]
async fn wal_mode_filters_with_the_publication_and_refuses_what_would_break_writes() {
    let db = WalDb::start().await;
    db.exec(ORDERS).await;
    let hook = Hook::start().await;
    let table = |rest: &str| {
        db.hook_config(
            &format!("name = \"orders\"\nwhen = \"status = 'paid' -- paid only\"\n{rest}"),
            &hook,
            "max_in_flight = 1",
        )
    };
    // The filter reads `status`, outside the primary key, the replica
    // identity: PostgreSQL would refuse every UPDATE and DELETE.
    let refused = db.try_install(&table("")).await.unwrap_err();
    assert_eq!(
        refused,
        "table public.orders: when: the row filter reads column(s) [\"status\"], which are not in \
         the table's replica identity [\"id\"]: with UPDATE or DELETE published, PostgreSQL would \
         refuse every UPDATE and DELETE of the table; set replica_identity = \"full\" in its \
         [[table]] (install sets it), or filter on replica identity columns only"
    );
    // A column the table lacks, and a function a row filter may not call.
    let missing = db.hook_config(
        "name = \"orders\"\nwhen = \"stauts = 'paid'\"\nreplica_identity = \"full\"",
        &hook,
        "",
    );
    assert_eq!(
        db.try_install(&missing).await.unwrap_err(),
        "table public.orders: when: column \"stauts\" does not exist"
    );
    let volatile = db.hook_config(
        "name = \"orders\"\nwhen = \"random() > 0.5\"\nreplica_identity = \"full\"",
        &hook,
        "",
    );
    let error = db.try_install(&volatile).await.unwrap_err();
    assert!(
        error.starts_with("table public.orders: when: invalid publication WHERE expression"),
        "{error}"
    );
    // The application's writes still work after the refusals.
    db.exec("INSERT INTO orders VALUES (9, 'x', 0); UPDATE orders SET total = 1 WHERE id = 9; DELETE FROM orders WHERE id = 9;")
        .await;

    let config = table("replica_identity = \"full\"");
    db.install(&config).await;
    let skor = Running::start(&config).await;
    db.exec(
        "INSERT INTO orders VALUES (1, 'new', 5);\
         INSERT INTO orders VALUES (2, 'paid', 50);\
         UPDATE orders SET total = 51 WHERE id = 2;\
         UPDATE orders SET status = 'paid' WHERE id = 1;\
         UPDATE orders SET status = 'shipped' WHERE id = 2;\
         UPDATE orders SET total = 52 WHERE id = 2;\
         DELETE FROM orders WHERE id = 1;\
         DELETE FROM orders WHERE id = 2;",
    )
    .await;
    let bodies: Vec<String> = hook.wait_for(5).await.into_iter().map(|r| r.body).collect();
    assert_eq!(
        bodies,
        [
            r#"{"table" : "orders", "schema" : "public", "op" : "INSERT", "data" : {"id":2,"status":"paid","total":50}}"#,
            r#"{"table" : "orders", "schema" : "public", "op" : "UPDATE", "data" : {"id":2,"status":"paid","total":51}}"#,
            // The old row did not match, the new one does: an INSERT.
            r#"{"table" : "orders", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"status":"paid","total":5}}"#,
            // The old row matched, the new one does not: a DELETE.
            r#"{"table" : "orders", "schema" : "public", "op" : "DELETE", "data" : {"id":2,"status":"paid","total":51}}"#,
            r#"{"table" : "orders", "schema" : "public", "op" : "DELETE", "data" : {"id":1,"status":"paid","total":5}}"#,
        ]
    );
    // Nothing more comes: one lane, commit order, and the barrier row
    // passes the filter.
    let requests = hook
        .barrier(db.exec(BARRIER), |body| is_row(body, BARRIER_ID))
        .await;
    assert_eq!(requests.len(), 6, "{requests:#?}");
    let filter: String = db
        .client
        .query_one(
            "SELECT rowfilter FROM pg_publication_tables WHERE pubname = 'skor' AND tablename = 'orders'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(filter, "(status = 'paid'::text)");
    skor.stop().await;
}
