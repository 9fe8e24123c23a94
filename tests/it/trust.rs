//! What a column may hold and what another role may do, against the
//! promise that capture never fails a writer and that no other role runs
//! code in skor's sessions, blocks them, or bends what skor captures.
//! Each runs on a private server with `wal_level = logical`, so every mode
//! is tried on the same rows.

use std::time::Duration;

use crate::common::bin::{config_file, run, stderr};
use crate::common::wal::WalDb;
use crate::common::wal_types::{ROWS_SQL, SCHEMA_SQL};
use crate::common::{eventually, eventually_within, Hook, Running};
use serde_json::value::RawValue;

/// The built-in types `wal_types` lacks, and the json values that json's
/// own operators refuse to read back (`\u0000`, a lone surrogate).
const MORE_TYPES_SQL: &str = r#"
ALTER TABLE wal_types
    ADD COLUMN c_money money, ADD COLUMN c_bit bit(3), ADD COLUMN c_varbit varbit,
    ADD COLUMN c_cidr cidr, ADD COLUMN c_macaddr macaddr, ADD COLUMN c_macaddr8 macaddr8,
    ADD COLUMN c_point point, ADD COLUMN c_line line, ADD COLUMN c_lseg lseg,
    ADD COLUMN c_path path, ADD COLUMN c_polygon polygon, ADD COLUMN c_circle circle,
    ADD COLUMN c_box box, ADD COLUMN c_tsvector tsvector, ADD COLUMN c_tsquery tsquery,
    ADD COLUMN c_xml xml, ADD COLUMN c_pg_lsn pg_lsn, ADD COLUMN c_int4range int4range,
    ADD COLUMN c_tstzrange tstzrange, ADD COLUMN c_multirange int4multirange,
    ADD COLUMN c_timetz timetz, ADD COLUMN c_name name, ADD COLUMN c_char1 "char",
    ADD COLUMN c_float4 float4, ADD COLUMN c_int8_array int8[], ADD COLUMN c_json_array json[];
INSERT INTO wal_types (id, c_money, c_bit, c_varbit, c_cidr, c_macaddr, c_macaddr8, c_point,
    c_line, c_lseg, c_path, c_polygon, c_circle, c_box, c_tsvector, c_tsquery, c_xml, c_pg_lsn,
    c_int4range, c_tstzrange, c_multirange, c_timetz, c_name, c_char1, c_float4, c_int8_array,
    c_json_array, c_json)
VALUES (6, 12.34, B'101', B'1', '10.0.0.0/8', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05',
    '(1,2)', '{1,-1,0}', '[(0,0),(1,1)]', '((0,0),(1,1),(2,0))', '((0,0),(1,1),(1,0))',
    '<(1,1),2>', '(2,2),(0,0)', 'a fat cat', 'fat & cat', '<a b="c">d</a>', '16/B374D848',
    '[1,5)', '["2024-01-01 00:00:00+00","2024-02-01 00:00:00+00")', '{[1,3),[5,7)}',
    '03:04:05+05:30', 'a name', 'x', 1.5, '{1,-2}', ARRAY['{"a":"\u0000"}'::json], '{"n": 1}');
INSERT INTO wal_types (id, c_json, c_text) VALUES (7, '{"a":"x\u0000y"}', 'nul');
INSERT INTO wal_types (id, c_json, c_text) VALUES (8, '{"a":"\ud800"}', 'surrogate');
INSERT INTO wal_types (id, c_json, c_text) VALUES (9, '["\udfff", "\u00e9", {"\u0000": null}]', 'more');
"#;

/// The `data` object of a payload as skor sent it, without parsing its
/// strings: a lone surrogate is no valid Unicode.
fn data_of(payload: &str) -> (String, i64, String) {
    #[derive(serde::Deserialize)]
    struct Event<'a> {
        op: String,
        #[serde(borrow)]
        data: &'a RawValue,
    }
    let event: Event = serde_json::from_str(payload).unwrap_or_else(|e| panic!("{e}: {payload}"));
    let id = event.data.get()["{\"id\":".len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (event.op, id, event.data.get().to_string())
}

#[tokio::test]
async fn every_built_in_type_and_json_that_cannot_be_read_back_commit_and_arrive_in_every_mode() {
    let db = WalDb::start().await;
    db.exec(SCHEMA_SQL).await;
    db.exec(ROWS_SQL).await;
    db.exec(MORE_TYPES_SQL).await;
    let modes = ["notify", "durable", "wal"];
    for mode in modes {
        db.exec(&format!(
            "CREATE TABLE types_{mode} (LIKE wal_types INCLUDING ALL); \
             ALTER TABLE types_{mode} REPLICA IDENTITY FULL;"
        ))
        .await;
    }
    let columns: Vec<String> = db
        .client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = 'wal_types'::regclass \
               AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let listed = format!("{columns:?}");
    let hook = Hook::start().await;
    // Durable mode computes each row's key (and here, a column list and the
    // old row); notify mode a column list too: each once read the row's
    // JSON back.
    let config = db.config(&format!(
        "[[table]]\nname = \"types_notify\"\nmode = \"notify\"\ncolumns = {listed}\nold = true\n\
         [[table]]\nname = \"types_durable\"\nmode = \"durable\"\ncolumns = {listed}\nold = true\n\
         [[table]]\nname = \"types_wal\"\nmode = \"wal\"\nold = true\n\
         [sink.hook]\ntype = \"webhook\"\nurl = \"{}\"\n",
        hook.url()
    ));
    db.install(&config).await;
    let skor = Running::start(&config).await;
    let mut expected = Vec::new();
    for mode in modes {
        let table = format!("types_{mode}");
        db.client
            .batch_execute(&format!("INSERT INTO {table} SELECT * FROM wal_types"))
            .await
            .unwrap_or_else(|e| panic!("{mode} mode failed the writer's INSERT: {e:?}"));
        for (id, data) in rendered(&db, &table).await {
            expected.push((table.clone(), "INSERT".to_string(), id, data));
        }
        db.client
            .batch_execute(&format!("UPDATE {table} SET c_text = 'updated'"))
            .await
            .unwrap_or_else(|e| panic!("{mode} mode failed the writer's UPDATE: {e:?}"));
        let after = rendered(&db, &table).await;
        for (id, data) in &after {
            expected.push((table.clone(), "UPDATE".to_string(), *id, data.clone()));
        }
        db.client
            .batch_execute(&format!("DELETE FROM {table}"))
            .await
            .unwrap_or_else(|e| panic!("{mode} mode failed the writer's DELETE: {e:?}"));
        for (id, data) in after {
            expected.push((table.clone(), "DELETE".to_string(), id, data));
        }
    }
    let requests = hook.wait_for(expected.len()).await;
    skor.stop().await;
    let mut received: Vec<(String, String, i64, String)> = requests
        .iter()
        .map(|r| {
            let table = r.body.split('"').nth(3).unwrap().to_string();
            let (op, id, data) = data_of(&r.body);
            (table, op, id, data)
        })
        .collect();
    received.sort();
    expected.sort();
    assert_eq!(received.len(), expected.len(), "one event per row change");
    for (got, want) in received.iter().zip(&expected) {
        assert_eq!(got, want, "the event's data against row_to_json");
    }
    assert!(
        received
            .iter()
            .any(|(t, _, id, data)| t == "types_durable" && *id == 8 && data.contains("\\ud800")),
        "the lone surrogate arrived as written"
    );
}

/// Each row of `table` as row_to_json renders it, by id.
async fn rendered(db: &WalDb, table: &str) -> Vec<(i64, String)> {
    db.client
        .query(
            &format!("SELECT id::int8, row_to_json(t)::text FROM {table} t ORDER BY id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// `skor ARGS --config FILE`, its exit status and standard error.
async fn skor(args: &[&str], config: &str) -> (bool, String) {
    let file = config_file(config);
    let path = file.path().to_str().unwrap().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--config", &path]);
    let output = run(&all).await;
    (output.status.success(), stderr(&output))
}

#[tokio::test]
async fn a_when_that_closes_its_parenthesis_is_refused_in_every_mode() {
    let db = WalDb::start().await;
    db.exec("CREATE TABLE orders (id int PRIMARY KEY); CREATE TABLE other (id int, note text);")
        .await;
    for mode in ["notify", "durable", "wal"] {
        for condition in [
            "id > 0), public.other WHERE (true",
            "true) OR (true",
            "id > 0; DROP TABLE other",
            "id > 0 /* ) */ ) OR (true",
        ] {
            let config = db.config(&format!(
                "[[table]]\nname = \"orders\"\nmode = \"{mode}\"\nwhen = \"{condition}\"\n"
            ));
            let (ok, error) = skor(&["check"], &config).await;
            assert!(!ok, "{mode}: `{condition}` passed check");
            assert!(
                error.contains("when") && error.contains("one SQL expression"),
                "{mode}: {error}"
            );
        }
    }
    let published: i64 = db
        .client
        .query_one("SELECT count(*) FROM pg_publication_tables", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(published, 0, "nothing reached the database");
    db.exec("UPDATE other SET note = 'still writable'").await;
}

/// Plants, in the schema `planted`, a function of every name and
/// signature of pg_catalog's that skor's SQL calls (every `name(` in
/// src/ and sql/ that names one), plus the better matches the issue found
/// (`unnest(int2vector)` ...) and operators on common types: each raises.
/// A session that searched `planted` first would fail.
async fn plant(db: &WalDb) {
    let mut names = std::collections::BTreeSet::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("sql"), root.join("src")];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let bytes = text.as_bytes();
        for (i, _) in text.match_indices('(') {
            let start = bytes[..i]
                .iter()
                .rposition(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                .map_or(0, |p| p + 1);
            if start < i {
                names.insert(text[start..i].to_lowercase());
            }
        }
    }
    let names: Vec<String> = names.into_iter().collect();
    let list = format!(
        "ARRAY[{}]::text[]",
        names
            .iter()
            .map(|n| format!("'{}'", n.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(",")
    );
    db.exec(&format!(
        "CREATE SCHEMA IF NOT EXISTS planted; \
         DO $$ DECLARE f record; BEGIN \
           FOR f IN SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args, \
                           pg_get_function_result(p.oid) AS result \
                      FROM pg_proc p WHERE p.pronamespace = 'pg_catalog'::regnamespace \
                       AND p.prokind = 'f' AND p.proname = ANY ({list}) LOOP \
             BEGIN \
               EXECUTE format('CREATE FUNCTION planted.%I(%s) RETURNS %s LANGUAGE plpgsql AS \
                               $b$BEGIN RAISE EXCEPTION ''planted %s ran''; END$b$', \
                              f.proname, f.args, f.result, f.proname); \
             EXCEPTION WHEN OTHERS THEN NULL; \
             END; \
           END LOOP; END $$;"
    ))
    .await;
    db.exec(
        "CREATE FUNCTION planted.unnest(int2vector) RETURNS SETOF int2 LANGUAGE plpgsql AS \
           $$BEGIN RAISE EXCEPTION 'planted unnest ran'; END$$; \
         CREATE FUNCTION planted.array_position(int2[], int2) RETURNS int LANGUAGE plpgsql AS \
           $$BEGIN RAISE EXCEPTION 'planted array_position ran'; END$$; \
         CREATE FUNCTION planted.boom(text, text) RETURNS bool LANGUAGE plpgsql AS \
           $$BEGIN RAISE EXCEPTION 'planted = ran'; END$$; \
         CREATE OPERATOR planted.= (LEFTARG = text, RIGHTARG = text, FUNCTION = planted.boom); \
         CREATE FUNCTION planted.boom_name(name, name) RETURNS bool LANGUAGE plpgsql AS \
           $$BEGIN RAISE EXCEPTION 'planted = ran'; END$$; \
         CREATE OPERATOR planted.= (LEFTARG = name, RIGHTARG = name, FUNCTION = planted.boom_name);",
    )
    .await;
    let planted: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'planted'::regnamespace",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(planted > 50, "planted {planted} functions only");
}

#[tokio::test]
async fn no_function_another_role_plants_runs_in_any_session_of_skors() {
    let db = WalDb::start().await;
    plant(&db).await;
    // skor connects as a superuser whose search_path puts the planted
    // schema first: every session that does not pin its own would run them.
    db.exec(
        "CREATE ROLE skor_admin LOGIN SUPERUSER; \
         ALTER ROLE skor_admin SET search_path = planted, pg_catalog, public; \
         CREATE TABLE orders (id int PRIMARY KEY, note text); \
         CREATE TABLE ledger (id int PRIMARY KEY, amount int); \
         CREATE TABLE stream (id int PRIMARY KEY, body json);",
    )
    .await;
    let probe = crate::common::connect(&format!("{} user=skor_admin", db.dsn())).await;
    let error = probe
        .query_one(
            "SELECT pg_catalog.count(*) FROM unnest('1 2'::int2vector)",
            &[],
        )
        .await
        .expect_err("an unpinned session runs the planted function");
    assert!(format!("{error:?}").contains("planted"), "{error:?}");
    let hook = Hook::start().await;
    let config = format!(
        "[source]\ndsn = \"{} user=skor_admin\"\nreconnect_max_backoff_ms = 500\nwal_status_interval_ms = 50\n\
         [[table]]\nname = \"orders\"\ncolumns = [\"id\", \"note\"]\n\
         [[table]]\nname = \"ledger\"\nmode = \"durable\"\nmetadata = [\"event_id\", \"txid\"]\n\
         [[table]]\nname = \"stream\"\nmode = \"wal\"\n\
         [sink.hook]\ntype = \"webhook\"\nurl = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        db.dsn(),
        hook.url()
    );
    for command in [&["install"][..], &["check", "--connect"]] {
        let (ok, error) = skor(command, &config).await;
        assert!(ok, "{command:?}: {error}");
    }
    let skor_daemon = Running::start(&config).await;
    db.exec(
        "INSERT INTO orders VALUES (1, 'a'); INSERT INTO ledger VALUES (1, 10); \
         INSERT INTO stream VALUES (1, '{}');",
    )
    .await;
    hook.wait_for(3).await;
    let (ok, error) = skor(&["backfill"], &config).await;
    assert!(ok, "backfill: {error}");
    hook.wait_for(6).await;
    db.exec(
        "INSERT INTO orders VALUES (2, 'b'); UPDATE ledger SET amount = 20; \
         DELETE FROM stream;",
    )
    .await;
    let bodies: Vec<String> = hook.wait_for(9).await.into_iter().map(|r| r.body).collect();
    let admin = skor_daemon.admin.expect("admin endpoint");
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("skor_wal_lag_bytes"), "{metrics}");
    skor_daemon.stop().await;
    let mut ops: Vec<String> = bodies
        .iter()
        .map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            format!(
                "{} {}",
                v["table"].as_str().unwrap(),
                v["op"].as_str().unwrap()
            )
        })
        .collect();
    ops.sort();
    assert_eq!(
        ops,
        [
            "ledger INSERT",
            "ledger READ",
            "ledger UPDATE",
            "orders INSERT",
            "orders INSERT",
            "orders READ",
            "stream DELETE",
            "stream INSERT",
            "stream READ"
        ]
    );
    let (ok, error) = skor(&["uninstall"], &config).await;
    assert!(ok, "uninstall: {error}");
}

#[tokio::test]
async fn install_waits_a_bounded_time_and_names_who_holds_its_lock() {
    let db = WalDb::start().await;
    db.exec(
        "CREATE ROLE mallory LOGIN; CREATE TABLE orders (id int PRIMARY KEY); \
         ALTER TABLE orders OWNER TO postgres;",
    )
    .await;
    let config = db.config("[[table]]\nname = \"orders\"\nmode = \"durable\"\n");
    // CONNECT alone lets a role hold the advisory lock of a first install.
    let mallory = crate::common::connect(&format!("{} user=mallory", db.dsn())).await;
    mallory
        .batch_execute(
            "SET application_name = 'squatter'; SELECT pg_advisory_lock(hashtext('skor install'))",
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (ok, error) = skor(&["install", "--lock-timeout", "1"], &config).await;
    assert!(!ok);
    assert!(started.elapsed() < Duration::from_secs(10), "it gave up");
    assert!(
        error.contains("waited 1.0 s for skor's install lock (an advisory lock), held by pid")
            && error.contains("role mallory")
            && error.contains("application \"squatter\""),
        "{error}"
    );
    // Once installed, skor's lock is one only its own role can take: the
    // squatter's advisory lock no longer holds anything up.
    mallory
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();
    let (ok, error) = skor(&["install"], &config).await;
    assert!(ok, "{error}");
    mallory
        .batch_execute("SELECT pg_advisory_lock(hashtext('skor install'))")
        .await
        .unwrap();
    let refused = mallory
        .batch_execute("BEGIN; LOCK TABLE skor.event_log IN SHARE UPDATE EXCLUSIVE MODE")
        .await
        .expect_err("mallory cannot take skor's lock");
    assert!(
        format!("{refused:?}").contains("permission denied"),
        "{refused:?}"
    );
    mallory.batch_execute("ROLLBACK").await.unwrap();
    let (ok, error) = skor(&["install", "--lock-timeout", "1"], &config).await;
    assert!(ok, "reinstall beside the squatter: {error}");
    // A session that holds a captured table (here the application's own
    // long transaction) is named too, and nothing was changed.
    let writer = crate::common::connect(&db.dsn()).await;
    writer
        .batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let (ok, error) = skor(&["install", "--lock-timeout", "1"], &config).await;
    assert!(!ok);
    assert!(
        error.contains("a lock on a table install or uninstall changes, held by pid")
            && error.contains("role postgres"),
        "{error}"
    );
    writer.batch_execute("ROLLBACK").await.unwrap();
    // Wal mode: PostgreSQL makes a slot once every transaction running
    // then has ended, and a role that may only connect can keep one open.
    mallory
        .batch_execute("BEGIN; CREATE TEMP TABLE held (id int)")
        .await
        .unwrap();
    let wal = db.config("[[table]]\nname = \"orders\"\n");
    let (ok, error) = skor(&["install", "--lock-timeout", "1"], &wal).await;
    assert!(!ok);
    assert!(
        error.contains("waited 1.0 s, still open: pid") && error.contains("role mallory"),
        "{error}"
    );
    mallory.batch_execute("ROLLBACK").await.unwrap();
    let (ok, error) = skor(&["install"], &wal).await;
    assert!(ok, "{error}");
}

#[tokio::test]
async fn wal_mode_adopts_no_publication_or_slot_it_did_not_create_and_notices_drift() {
    let db = WalDb::start().await;
    db.exec(
        "CREATE ROLE mallory LOGIN REPLICATION; GRANT CREATE ON DATABASE postgres TO mallory; \
         CREATE TABLE orders (id int PRIMARY KEY, status text); \
         CREATE TABLE ledger (id int PRIMARY KEY);",
    )
    .await;
    let hook = Hook::start().await;
    let config = db.config(&format!(
        "[[table]]\nname = \"orders\"\nops = [\"INSERT\", \"UPDATE\"]\n\
         [sink.hook]\ntype = \"webhook\"\nurl = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        hook.url()
    ));
    let mallory = crate::common::connect(&format!("{} user=mallory", db.dsn())).await;
    mallory
        .batch_execute("CREATE PUBLICATION skor")
        .await
        .unwrap();
    let error = db.try_install(&config).await.expect_err("refused");
    assert!(
        error.contains("publication \"skor\" belongs to role mallory, not to postgres"),
        "{error}"
    );
    mallory
        .batch_execute("DROP PUBLICATION skor")
        .await
        .unwrap();
    // A slot made by a REPLICATION role, at a position of its choosing.
    mallory
        .batch_execute("SELECT pg_create_logical_replication_slot('skor', 'pgoutput')")
        .await
        .unwrap();
    let error = db.try_install(&config).await.expect_err("refused");
    assert!(
        error.contains("replication slot \"skor\" exists, but skor install did not create it"),
        "{error}"
    );
    let (ok, error) = skor(&["install", "--adopt-slot"], &config).await;
    assert!(ok, "--adopt-slot: {error}");
    // That slot predates the publication, so PostgreSQL cannot stream from
    // it (a_stream_refused_as_it_starts_is_retried_with_backoff): make a
    // new one.
    db.exec("SELECT pg_drop_replication_slot('skor')").await;
    db.install(&config).await;
    let (ok, error) = skor(&["check", "--connect"], &config).await;
    assert!(ok, "{error}");

    let daemon = Running::start(&config).await;
    let admin = daemon.admin.expect("admin endpoint");
    let ready = || async move {
        let response = reqwest::get(format!("http://{admin}/readyz"))
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    eventually("/readyz to answer 200", || async {
        match ready().await {
            (200, _) => Ok(()),
            other => Err(other),
        }
    })
    .await;
    // Another role (here a superuser, as a publication's owner could)
    // narrows what the publication carries.
    db.exec("ALTER PUBLICATION skor SET (publish = 'insert')")
        .await;
    let body = eventually_within("/readyz to answer 503", Duration::from_secs(30), || async {
        match ready().await {
            (503, body) => Ok(body),
            other => Err(other),
        }
    })
    .await;
    assert!(
        body.contains("publication drift: publication \"skor\" lost: publish insert=t update=t"),
        "{body}"
    );
    let (ok, error) = skor(&["check", "--connect"], &config).await;
    assert!(!ok);
    assert!(
        error.contains("the publication is not what skor install made from this config")
            && error.contains("update=f "),
        "{error}"
    );
    db.exec("ALTER PUBLICATION skor ADD TABLE ledger").await;
    let (_, error) = skor(&["check", "--connect"], &config).await;
    assert!(error.contains("table public.ledger"), "{error}");
    daemon.stop().await;
    // Install puts it back as the config says.
    db.install(&config).await;
    let (ok, error) = skor(&["check", "--connect"], &config).await;
    assert!(ok, "{error}");
}

#[tokio::test]
async fn a_stream_refused_as_it_starts_is_retried_with_backoff() {
    let db = WalDb::start().await;
    db.exec("CREATE TABLE orders (id int PRIMARY KEY)").await;
    let config = db.config("[[table]]\nname = \"orders\"\n");
    // A slot older than the publication (one another role made, adopted):
    // PostgreSQL ends every stream from it at once, "publication does not
    // exist", until its position passes the publication's creation.
    db.exec("SELECT pg_create_logical_replication_slot('skor', 'pgoutput')")
        .await;
    let (ok, error) = skor(&["install", "--adopt-slot"], &config).await;
    assert!(ok, "{error}");
    let file = config_file(&config);
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = crate::common::bin::spawn_logged(&file, log.path());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let output = crate::common::bin::sigterm_and_wait(child).await;
    assert!(output.status.success() || output.status.code().is_some());
    let text = std::fs::read_to_string(log.path()).unwrap();
    let attempts = text
        .lines()
        .filter(|l| {
            l.contains("replication stream lost")
                || l.contains("cannot start the replication stream")
        })
        .count();
    assert!(attempts >= 2, "it kept trying: {text}");
    // 100, 200, 400, then 500 ms apart (reconnect_max_backoff_ms = 500).
    assert!(attempts <= 12, "{attempts} attempts in 4 s: {text}");
    assert!(
        text.contains("publication \\\"skor\\\" does not exist")
            || text.contains("publication \"skor\" does not exist"),
        "the log says why: {text}"
    );
}
