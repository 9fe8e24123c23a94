//! Standard Webhooks signatures: `webhook-id`, `webhook-timestamp` and a
//! `v1` HMAC-SHA256 `webhook-signature` over `{id}.{timestamp}.{body}`.
//!
//! Spec: <https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md>.

use std::fmt::Write as _;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use skor_sink_api::Event;
use skor_sink_kit::Redacted;

/// The header naming the message, stable across attempts.
pub const WEBHOOK_ID_HEADER: &str = "webhook-id";
/// The header holding the attempt's time, in unix seconds.
pub const WEBHOOK_TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// The header holding the `v1,<base64>` signature(s), space-separated.
pub const WEBHOOK_SIGNATURE_HEADER: &str = "webhook-signature";

/// The prefix of a base64-encoded Standard Webhooks secret.
const SECRET_PREFIX: &str = "whsec_";

/// The key sizes the spec allows: 24 to 64 bytes (192 to 512 bits).
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// Signs requests with one HMAC key per configured secret.
///
/// The keys are turned into HMAC states once, at sink construction; each
/// request clones a state rather than re-deriving it from the secret.
#[derive(Clone)]
pub struct Signer {
    keys: Vec<Hmac<Sha256>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} keys)", self.keys.len())
    }
}

impl Signer {
    /// Prepares the keys; `None` when no secret is configured. The error
    /// says which secret (by position) is wrong and why, never its value.
    pub fn new(secrets: &[Redacted<String>]) -> Result<Option<Self>, String> {
        if secrets.is_empty() {
            return Ok(None);
        }
        let mut keys = Vec::with_capacity(secrets.len());
        for (i, secret) in secrets.iter().enumerate() {
            let which = if secrets.len() == 1 {
                String::new()
            } else {
                format!(" #{}", i + 1)
            };
            let key =
                key_bytes(secret.expose()).map_err(|reason| format!("secret{which}: {reason}"))?;
            let mac = Hmac::<Sha256>::new_from_slice(&key)
                .map_err(|_| format!("secret{which}: not usable as an HMAC key"))?;
            keys.push(mac);
        }
        Ok(Some(Self { keys }))
    }

    /// The `webhook-signature` value for one attempt: `v1,<base64>` per
    /// key, space-separated, the first configured secret first.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let timestamp = timestamp.to_string();
        let mut header = String::with_capacity(self.keys.len() * 48);
        for key in &self.keys {
            let mut mac = key.clone();
            // The signed content is `{id}.{timestamp}.{body}`, fed in parts
            // so the body is not copied.
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.as_bytes());
            mac.update(b".");
            mac.update(body);
            if !header.is_empty() {
                header.push(' ');
            }
            header.push_str("v1,");
            BASE64.encode_string(mac.finalize().into_bytes(), &mut header);
        }
        header
    }
}

/// The HMAC key a configured secret stands for: `whsec_<base64>` is the
/// decoded bytes, as the spec serialises secrets; any other string is its
/// own UTF-8 bytes, used as they are.
fn key_bytes(secret: &str) -> Result<Vec<u8>, String> {
    let key = match secret.strip_prefix(SECRET_PREFIX) {
        Some(encoded) => BASE64
            .decode(encoded.trim())
            .map_err(|e| format!("the part after `whsec_` is not valid base64 ({e})"))?,
        None => secret.as_bytes().to_vec(),
    };
    if !KEY_BYTES.contains(&key.len()) {
        return Err(format!(
            "the key is {} bytes; Standard Webhooks keys are {} to {} bytes{}",
            key.len(),
            KEY_BYTES.start(),
            KEY_BYTES.end(),
            if secret.starts_with(SECRET_PREFIX) {
                " (after base64 decoding)"
            } else {
                ""
            }
        ));
    }
    Ok(key)
}

/// The `webhook-id` of one event: its message id, the same on every attempt.
pub fn event_id(event: &Event) -> String {
    event.message_id()
}

/// The `webhook-id` of a batch: `batch_` and the first 16 bytes, in hex,
/// of a SHA-256 over its members' ids in order, so a retried batch (the
/// same events) keeps its id and a different batch gets another one.
pub fn batch_id(events: &[Arc<Event>]) -> String {
    let mut digest = Sha256::new();
    for event in events {
        digest.update(event.message_id().as_bytes());
        // A separator no id contains, so ["a","bc"] and ["ab","c"] differ.
        digest.update(b"\n");
    }
    let mut id = String::with_capacity(6 + 32);
    id.push_str("batch_");
    for byte in &digest.finalize()[..16] {
        let _ = write!(id, "{byte:02x}");
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(text: &str) -> Vec<Redacted<String>> {
        vec![Redacted::new(text.to_string())]
    }

    #[test]
    fn matches_the_reference_implementations_test_vector() {
        // The vector the standardwebhooks libraries test against.
        let signer = Signer::new(&secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
            .unwrap()
            .unwrap();
        let signature = signer.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn signs_with_every_secret_for_rotation() {
        let signer = Signer::new(&[
            Redacted::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string()),
            Redacted::new("a raw secret of at least 24 bytes".to_string()),
        ])
        .unwrap()
        .unwrap();
        let header = signer.sign("evt_1", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2, "{header}");
        assert!(parts.iter().all(|p| p.starts_with("v1,")), "{header}");
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn rejects_bad_base64_and_short_keys_without_showing_them() {
        let error = Signer::new(&secret("whsec_not*base64!")).unwrap_err();
        assert!(error.contains("base64"), "{error}");
        assert!(!error.contains("not*base64"), "{error}");
        let error = Signer::new(&secret("whsec_c2hvcnQ=")).unwrap_err();
        assert!(error.contains("5 bytes"), "{error}");
        let error = Signer::new(&secret("hunter2")).unwrap_err();
        assert!(
            error.contains("7 bytes") && !error.contains("hunter2"),
            "{error}"
        );
        assert!(Signer::new(&[]).unwrap().is_none());
    }

    #[test]
    fn a_batch_id_depends_on_its_members_and_their_order() {
        let event = |id: i64| {
            Arc::new(Event {
                channel: "skor".into(),
                schema: "public".into(),
                table: "t".into(),
                op: skor_sink_api::Op::Insert,
                payload: skor_sink_api::Bytes::from_static(b"{}"),
                format: skor_sink_api::Format::Skor,
                key: None,
                id: Some(id),
                seq: id as u64,
            })
        };
        let ab = batch_id(&[event(1), event(2)]);
        assert_eq!(ab, batch_id(&[event(1), event(2)]));
        assert_ne!(ab, batch_id(&[event(2), event(1)]));
        assert_ne!(ab, batch_id(&[event(1)]));
        assert!(ab.starts_with("batch_") && ab.len() == 38, "{ab}");
    }
}
