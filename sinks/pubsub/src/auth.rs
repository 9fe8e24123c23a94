//! Access tokens for the Pub/Sub API: from a service-account key file, or
//! from Application Default Credentials; none for the emulator. Tokens are
//! cached by gcp_auth until shortly before they expire, and never logged.

use std::path::Path;
use std::sync::Arc;

use gcp_auth::{CustomServiceAccount, TokenProvider};
use skor_sink_api::SinkError;
use skor_sink_kit::describe;
use tokio::sync::OnceCell;

/// The OAuth2 scope publishing needs.
const SCOPE: &str = "https://www.googleapis.com/auth/pubsub";

/// How requests are authorized.
pub(crate) enum Auth {
    /// The emulator checks nothing.
    None,
    /// A service-account key read at start-up.
    Key(Arc<CustomServiceAccount>),
    /// Application Default Credentials, looked up with the first event
    /// (the lookup may ask the metadata server) and again after a failed
    /// lookup.
    Default(OnceCell<Arc<dyn TokenProvider>>),
}

impl Auth {
    /// Reads and checks a service-account key file. The error names the
    /// file and never quotes it.
    pub(crate) fn key_file(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        let key = CustomServiceAccount::from_json(&text).map_err(|e| match e {
            // serde_json may quote the value it refused: say where only.
            gcp_auth::Error::Json(_, json) => format!(
                "{shown}: not a service-account key file ({:?} error at line {} column {}; \
                 expected the JSON key of a service account, with type, client_email, \
                 private_key and token_uri)",
                json.classify(),
                json.line(),
                json.column()
            ),
            other => format!("{shown}: {}", describe(&other)),
        })?;
        Ok(Auth::Key(Arc::new(key)))
    }

    /// The `Authorization` header value, if requests need one.
    pub(crate) async fn header(&self) -> Result<Option<String>, SinkError> {
        let provider: &dyn TokenProvider = match self {
            Auth::None => return Ok(None),
            Auth::Key(key) => key.as_ref(),
            Auth::Default(cell) => cell
                .get_or_try_init(gcp_auth::provider)
                .await
                .map_err(|e| token_error("finding Application Default Credentials", &e))?
                .as_ref(),
        };
        let token = provider
            .token(&[SCOPE])
            .await
            .map_err(|e| token_error("getting an access token", &e))?;
        Ok(Some(format!("Bearer {}", token.as_str())))
    }
}

/// Sorts a failure to get a token: an unreachable token endpoint is an
/// outage to wait out; refused or missing credentials are permanent.
fn token_error(what: &str, error: &gcp_auth::Error) -> SinkError {
    match error {
        gcp_auth::Error::Http(..) | gcp_auth::Error::Other("HTTP request failed", _) => {
            SinkError::disconnected(format!("{what}: unreachable: {}", describe(error)))
        }
        gcp_auth::Error::Str("token request failed") => SinkError::permanent(format!(
            "authentication failed, {what}: the token endpoint refused the credentials \
             (a revoked or deleted key, or a wrong token_uri)"
        )),
        gcp_auth::Error::NoAuthMethod(..) => SinkError::permanent(format!(
            "authentication failed, {what}: none found; set credentials_file, or \
             GOOGLE_APPLICATION_CREDENTIALS, or run `gcloud auth application-default login`, \
             or run on Google Cloud with a service account"
        )),
        other => SinkError::permanent(format!(
            "authentication failed, {what}: {}",
            describe(other)
        )),
    }
}
