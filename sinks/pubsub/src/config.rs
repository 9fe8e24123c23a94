//! `[sink.NAME]` options of `type = "pubsub"`.

use std::path::PathBuf;

use skor_sink_kit::Template;

/// The API's own endpoint, when neither `endpoint` nor an emulator is set.
pub const DEFAULT_ENDPOINT: &str = "https://pubsub.googleapis.com";

/// The variable Google's client libraries read the emulator's `host:port` from.
pub const EMULATOR_HOST_VAR: &str = "PUBSUB_EMULATOR_HOST";

const fn default_timeout_ms() -> u64 {
    10_000
}

const fn default_batch_size() -> usize {
    100
}

/// Where and how to publish.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PubsubConfig {
    /// The Google Cloud project that owns the topic.
    pub project: String,
    /// The topic's id within the project, over `{schema}`, `{table}`,
    /// `{op}` and `{channel}`.
    pub topic: Template,
    /// A service-account key file (JSON). Unset: Application Default
    /// Credentials (`GOOGLE_APPLICATION_CREDENTIALS`, the gcloud user's
    /// application-default login, or the metadata server on Google Cloud).
    /// Its content is never logged.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Another API endpoint, such as a locational one
    /// (`https://europe-west1-pubsub.googleapis.com`), which keeps ordered
    /// publishing in one region.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `host:port` of a Pub/Sub emulator, reached over plain HTTP without
    /// credentials. Unset: `PUBSUB_EMULATOR_HOST`, when `endpoint` is unset
    /// too, as Google's client libraries do.
    #[serde(default)]
    pub emulator_host: Option<String>,
    /// How long one publish request may take, connecting included, in
    /// milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Events one publish request may carry, at most 1000; a lane sends
    /// what it has queued, up to this many, without waiting for more.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long a lane may wait for more events to fill a batch, in
    /// milliseconds; 0 sends what is there.
    #[serde(default)]
    pub batch_timeout_ms: u64,
}

impl PubsubConfig {
    /// A config for `project` and `topic` with every other option at its default.
    pub fn new(project: impl Into<String>, topic: Template) -> Self {
        Self {
            project: project.into(),
            topic,
            credentials_file: None,
            endpoint: None,
            emulator_host: None,
            timeout_ms: default_timeout_ms(),
            batch_size: default_batch_size(),
            batch_timeout_ms: 0,
        }
    }

    /// Where requests go: the emulator (option, then environment, when
    /// no endpoint is set), or an endpoint with credentials.
    pub fn target(&self) -> Target {
        if let Some(host) = &self.emulator_host {
            return Target::Emulator(host.clone());
        }
        if let Some(endpoint) = &self.endpoint {
            return Target::Api(endpoint.trim_end_matches('/').to_string());
        }
        match std::env::var(EMULATOR_HOST_VAR) {
            Ok(host) if !host.is_empty() => Target::Emulator(host),
            _ => Target::Api(DEFAULT_ENDPOINT.to_string()),
        }
    }
}

/// Where a sink sends its requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// An emulator's `host:port`: plain HTTP, no credentials.
    Emulator(String),
    /// The API at this base URL, with an access token.
    Api(String),
}
