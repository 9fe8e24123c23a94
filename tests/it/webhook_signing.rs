//! Standard Webhooks signing, checked the way a receiver would: with its
//! own HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`, written
//! here from the spec rather than calling skor's signer.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::{hook_config, start_installed, status, Hook, Request, TestDb};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const TABLE: &str = "CREATE TABLE items (id int PRIMARY KEY, name text);";

/// A fresh `whsec_` secret and the key bytes it stands for.
fn whsec() -> (String, Vec<u8>) {
    let key: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
    (format!("whsec_{}", BASE64.encode(&key)), key)
}

fn header<'a>(request: &'a Request, name: &str) -> &'a str {
    request
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header: {request:#?}"))
        .to_str()
        .unwrap()
}

/// Checks a request as a Standard Webhooks receiver does and returns its
/// webhook-id.
fn verify(request: &Request, key: &[u8]) -> String {
    let id = header(request, "webhook-id");
    let timestamp = header(request, "webhook-timestamp");
    let signatures = header(request, "webhook-signature");
    let sent: u64 = timestamp.parse().expect("unix seconds");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now.abs_diff(sent) <= 5,
        "timestamp {sent} is not close to now ({now})"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{timestamp}.{}", request.body).as_bytes());
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    assert!(
        signatures.split(' ').any(|s| s == expected),
        "no valid signature in {signatures:?}, expected {expected}"
    );
    id.to_string()
}

#[tokio::test]
async fn every_request_is_signed_and_a_retry_keeps_its_webhook_id() {
    let (secret, key) = whsec();
    let hook = Hook::scripted(vec![status(503)], status(200)).await;
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let cfg = hook_config(
        &db,
        "name = \"items\"",
        &hook,
        &format!("secret = \"{secret}\""),
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec("INSERT INTO items VALUES (1, 'a'); INSERT INTO items VALUES (2, 'b');")
        .await;
    let requests = hook.wait_for(3).await;
    let mut ids: BTreeMap<String, Vec<&Request>> = BTreeMap::new();
    for request in &requests {
        ids.entry(verify(request, &key)).or_default().push(request);
    }
    assert_eq!(ids.len(), 2, "one webhook-id per event: {ids:#?}");
    let retried: Vec<_> = ids.values().filter(|r| r.len() == 2).collect();
    assert_eq!(retried.len(), 1, "{ids:#?}");
    let (first, second) = (retried[0][0], retried[0][1]);
    assert_eq!((first.status, second.status), (503, 200));
    assert_eq!(first.body, second.body, "the retry is the same event");
    assert!(ids.keys().all(|id| id.starts_with("msg_")), "{ids:#?}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_durable_events_webhook_id_is_its_event_log_id() {
    let (secret, key) = whsec();
    let hook = Hook::start().await;
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let cfg = hook_config(
        &db,
        "name = \"items\"\nmode = \"durable\"",
        &hook,
        &format!("secret = \"{secret}\""),
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec("INSERT INTO items VALUES (1, 'kept')").await;
    let requests = hook.wait_for(1).await;
    let id = verify(&requests[0], &key);
    assert_eq!(id, format!("evt_{}", db.event_ids().await[0]));
    daemon.stop().await;
}

#[tokio::test]
async fn a_batch_is_signed_over_its_array_body_and_keeps_its_id_on_retry() {
    let (secret, key) = whsec();
    let hook = Hook::scripted(vec![status(503)], status(200)).await;
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let cfg = hook_config(
        &db,
        "name = \"items\"",
        &hook,
        // One lane, so the events go out as batches of several rather than
        // one per lane.
        &format!(
            "secret = \"{secret}\"\nbatch_size = 10\nbatch_timeout_ms = 50\nmax_in_flight = 1"
        ),
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec("INSERT INTO items SELECT id, 'n' FROM generate_series(1, 15) id")
        .await;
    let sink = daemon.stats.sink("hook").unwrap();
    crate::common::eventually_true("all delivered", || sink.delivered.get() == 15).await;
    let requests = hook.requests();
    let ids: Vec<String> = requests.iter().map(|r| verify(r, &key)).collect();
    assert!(
        requests.iter().all(|r| r.body.starts_with('[')),
        "{requests:#?}"
    );
    assert!(ids.iter().all(|id| id.starts_with("batch_")), "{ids:?}");
    let refused = requests.iter().position(|r| r.status == 503).unwrap();
    let retry = requests
        .iter()
        .enumerate()
        .position(|(i, r)| i != refused && r.body == requests[refused].body)
        .expect("the refused batch was sent again");
    assert_eq!(
        ids[refused], ids[retry],
        "a retried batch keeps its webhook-id"
    );
    assert!(requests.len() >= 3, "more than one batch: {requests:#?}");
    for (i, other) in requests.iter().enumerate() {
        if other.body != requests[refused].body {
            assert_ne!(ids[i], ids[refused], "other batches have other ids");
        }
    }
    daemon.stop().await;
}

#[tokio::test]
async fn a_secret_without_the_whsec_prefix_is_used_as_raw_bytes() {
    let secret = "a plain shared secret, 24+ bytes long";
    let hook = Hook::start().await;
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let cfg = hook_config(
        &db,
        "name = \"items\"",
        &hook,
        &format!("secret = \"{secret}\""),
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec("INSERT INTO items VALUES (1, 'raw')").await;
    let requests = hook.wait_for(1).await;
    verify(&requests[0], secret.as_bytes());
    daemon.stop().await;
}

#[tokio::test]
async fn rotation_signs_with_the_new_and_the_old_secret() {
    let ((new, new_key), (old, old_key)) = (whsec(), whsec());
    let hook = Hook::start().await;
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let cfg = hook_config(
        &db,
        "name = \"items\"",
        &hook,
        &format!("secret = [\"{new}\", \"{old}\"]"),
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec("INSERT INTO items VALUES (1, 'rotating')").await;
    let requests = hook.wait_for(1).await;
    // A receiver holding either key accepts the request.
    verify(&requests[0], &new_key);
    verify(&requests[0], &old_key);
    daemon.stop().await;
}

#[tokio::test]
async fn without_a_secret_no_webhook_headers_are_sent() {
    let hook = Hook::start().await;
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let cfg = hook_config(&db, "name = \"items\"", &hook, "");
    let daemon = start_installed(&db, &cfg).await;
    db.exec("INSERT INTO items VALUES (1, 'plain')").await;
    let requests = hook.wait_for(1).await;
    assert!(
        !requests[0]
            .headers
            .keys()
            .any(|name| name.as_str().starts_with("webhook-")),
        "{:?}",
        requests[0].headers
    );
    daemon.stop().await;
}
