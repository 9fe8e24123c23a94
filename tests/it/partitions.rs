//! Partitioned tables: a trigger on the partitioned table is cloned onto
//! its partitions; events name the partitioned table, so routes written for
//! it match, in both modes; install twice and uninstall work.

use crate::common::{bin, config, install, Hook, Running, TestDb};

const TABLES: &str = "\
    CREATE TABLE parted (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region); \
    CREATE TABLE parted_eu PARTITION OF parted FOR VALUES IN ('eu'); \
    CREATE TABLE parted_us PARTITION OF parted FOR VALUES IN ('us');";

async fn skor_triggers(db: &TestDb) -> Vec<String> {
    db.client
        .query(
            "SELECT tgrelid::regclass::text || '.' || tgname FROM pg_trigger \
              WHERE tgname LIKE 'skor%' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn partitions_are_named_by_their_table(mode: &str) {
    let db = TestDb::new().await;
    db.exec(TABLES).await;
    let hook = Hook::start().await;
    let config = config(
        &db,
        &format!(
            "mode = \"{mode}\"\n[[table]]\nname = \"parted\"\nops = [\"INSERT\", \"DELETE\"]\n\
             [sink.hook]\ntype = \"webhook\"\nurl = \"{}\"\n\
             [[route]]\ntables = [\"public.parted\"]\nsinks = [\"hook\"]\n",
            hook.url()
        ),
    );
    // Twice: the second run meets the partitions' cloned triggers.
    install(&db, &config).await;
    install(&db, &config).await;
    assert_eq!(
        skor_triggers(&db).await,
        [
            "parted.skor_delete",
            "parted.skor_insert",
            "parted_eu.skor_delete",
            "parted_eu.skor_insert",
            "parted_us.skor_delete",
            "parted_us.skor_insert",
        ]
    );
    let daemon = Running::start(&config).await;
    db.exec(
        "INSERT INTO parted VALUES (1, 'eu', 'a'); INSERT INTO parted VALUES (2, 'us', 'b'); \
         DELETE FROM parted WHERE id = 1;",
    )
    .await;
    let mut bodies: Vec<String> = hook.wait_for(3).await.into_iter().map(|r| r.body).collect();
    daemon.stop().await;
    bodies.sort();
    assert_eq!(
        bodies,
        [
            r#"{"table" : "parted", "schema" : "public", "op" : "DELETE", "data" : {"id":1,"region":"eu","v":"a"}}"#,
            r#"{"table" : "parted", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"region":"eu","v":"a"}}"#,
            r#"{"table" : "parted", "schema" : "public", "op" : "INSERT", "data" : {"id":2,"region":"us","v":"b"}}"#,
        ]
    );
    assert_eq!(daemon_unrouted(&db).await, 0);

    let file = bin::config_file(&config);
    let output = bin::run(&["--config", file.path().to_str().unwrap(), "uninstall"]).await;
    assert!(output.status.success(), "{}", bin::stderr(&output));
    assert_eq!(skor_triggers(&db).await, Vec::<String>::new());
    let schema: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'skor'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(schema, 0, "uninstall removed the schema");
}

/// Events left in the event log: none once every event was routed.
async fn daemon_unrouted(db: &TestDb) -> i64 {
    db.client
        .query_one("SELECT count(*) FROM skor.event_log", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn notify_mode_names_the_partitioned_table() {
    partitions_are_named_by_their_table("notify").await;
}

#[tokio::test]
async fn durable_mode_names_the_partitioned_table() {
    partitions_are_named_by_their_table("durable").await;
}
