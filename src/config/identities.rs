//! `[identities.<name>]`: configured identities and their token sources.

use std::path::PathBuf;
use std::time::Duration;

use super::{ProviderConfig, Section, is_role_arn};

pub(super) const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Default `refresh_fraction` of refresh-token sources (also used by refresh-token sessions).
pub const DEFAULT_REFRESH_FRACTION: f64 = 0.5;

/// One identity configured in the file: `[identities.<name>]`.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// The table name; used in logs, metrics-free (names are not labels) and by `imds.identity`.
    pub name: String,
    /// The `[providers.<name>]` that issues its ID tokens.
    pub provider: String,
    /// `CustomRoleArn` for this identity (else `cognito.custom_role_arn`).
    pub role: Option<String>,
    /// Where its ID tokens come from.
    pub source: SourceConfig,
}

/// Where a configured identity's ID tokens come from.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// A file something else keeps fresh; polled and reloaded on change.
    IdTokenFile {
        /// The file (the raw ID token, surrounding whitespace ignored).
        path: PathBuf,
        /// How often the file is checked for changes.
        poll_interval: Duration,
    },
    /// An OIDC refresh token redeemed at the provider's token endpoint.
    RefreshToken {
        /// The file holding the current refresh token; rotated tokens are written back to it.
        path: PathBuf,
        /// The OAuth client id the refresh token was issued to.
        client_id: String,
        /// The client secret (confidential clients), read from `client_secret_file`.
        client_secret: Option<crate::secret::SecretString>,
        /// How the client authenticates at the token endpoint.
        auth: ClientAuth,
        /// Redeem after this fraction of an ID token's lifetime (plus up to 10 % jitter).
        refresh_fraction: f64,
    },
}

/// Token endpoint client authentication (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret` in the form body (Auth0's default for regular web apps).
    Post,
    /// HTTP Basic with the url-encoded client id and secret.
    Basic,
}

pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub(super) fn build_identities(
    root: &Section<'_>,
    providers: Option<&[ProviderConfig]>,
) -> Option<Vec<IdentityConfig>> {
    let table = root.section("identities");
    let mut out = Vec::new();
    let mut ok = true;
    for name in table.keys() {
        let s = table.section(&name);
        match build_identity(&s, &name, providers) {
            Some(i) => out.push(i),
            None => ok = false,
        }
        s.finish();
    }
    table.finish();
    ok.then_some(out)
}

pub(super) fn build_identity(
    s: &Section<'_>,
    name: &str,
    providers: Option<&[ProviderConfig]>,
) -> Option<IdentityConfig> {
    if !valid_name(name) {
        s.error_here("identity names may contain only letters, digits, '_' and '-'");
    }
    let provider = provider(s, providers);
    let role = role(s);
    let source = SourceSettings::read(s).source(s);
    Some(IdentityConfig {
        name: name.to_owned(),
        provider: provider?,
        role,
        source: source?,
    })
}

/// `provider`: required, one of `[providers.*]`.
fn provider(s: &Section<'_>, providers: Option<&[ProviderConfig]>) -> Option<String> {
    s.required_str("provider").and_then(|p| {
        // When providers failed to build their own errors are already reported.
        if providers.is_some_and(|all| !all.iter().any(|c| c.name == p)) {
            let known: Vec<&str> = providers
                .unwrap_or_default()
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            s.error(
                "provider",
                format!("no [providers.{p}] is configured (configured: {known:?})"),
            );
            return None;
        }
        Some(p)
    })
}

/// `role`: an IAM role ARN, if set (an invalid one is reported and left out).
fn role(s: &Section<'_>) -> Option<String> {
    s.opt_str("role").and_then(|r| {
        if is_role_arn(&r) {
            Some(r)
        } else {
            s.error(
                "role",
                format!("{r:?} is not an IAM role ARN like arn:aws:iam::123456789012:role/name"),
            );
            None
        }
    })
}

/// Every setting of both kinds of source, read before the kind is known (so each is checked
/// once and a setting of the other kind can be named).
struct SourceSettings {
    id_file: Option<String>,
    refresh_file: Option<String>,
    poll_interval: Duration,
    client_id: Option<String>,
    secret_file: Option<String>,
    auth_text: Option<String>,
    refresh_fraction: f64,
}

impl SourceSettings {
    fn read(s: &Section<'_>) -> Self {
        Self {
            id_file: s.opt_str("id_token_file"),
            refresh_file: s.opt_str("refresh_token_file"),
            poll_interval: s.duration_in(
                "poll_interval",
                DEFAULT_POLL_INTERVAL,
                Duration::from_millis(100),
                Duration::from_secs(3600),
            ),
            client_id: s.opt_str("client_id"),
            secret_file: s.opt_str("client_secret_file"),
            auth_text: s.opt_str("token_endpoint_auth"),
            refresh_fraction: s.f64_in("refresh_fraction", DEFAULT_REFRESH_FRACTION, 0.1, 0.8),
        }
    }

    /// Exactly one of `id_token_file` and `refresh_token_file`, with only its own settings.
    fn source(mut self, s: &Section<'_>) -> Option<SourceConfig> {
        match (self.id_file.take(), self.refresh_file.take()) {
            (Some(_), Some(_)) => {
                s.error_here("set either id_token_file or refresh_token_file, not both");
                None
            }
            (None, None) => {
                s.error_here(
                    "a source is required: id_token_file (a file kept fresh by something else) or \
                     refresh_token_file with client_id",
                );
                None
            }
            (Some(path), None) => Some(self.id_token_file(s, path)),
            (None, Some(path)) => self.refresh_token(s, path),
        }
    }

    fn id_token_file(self, s: &Section<'_>, path: String) -> SourceConfig {
        for (key, present) in [
            ("client_id", self.client_id.is_some()),
            ("client_secret_file", self.secret_file.is_some()),
            ("token_endpoint_auth", self.auth_text.is_some()),
            ("refresh_fraction", s.has("refresh_fraction")),
        ] {
            if present {
                s.error(key, "only applies with refresh_token_file");
            }
        }
        SourceConfig::IdTokenFile {
            path: path.into(),
            poll_interval: self.poll_interval,
        }
    }

    fn refresh_token(self, s: &Section<'_>, path: String) -> Option<SourceConfig> {
        if s.has("poll_interval") {
            s.error("poll_interval", "only applies with id_token_file");
        }
        let client_id = self.client_id.filter(|c| !c.trim().is_empty());
        if client_id.is_none() {
            s.error(
                "client_id",
                "required with refresh_token_file: the OAuth client the refresh token was \
                 issued to",
            );
        }
        let client_secret = self.secret_file.and_then(|f| client_secret(s, &f));
        let auth = client_auth(s, self.auth_text.as_deref());
        client_id.map(|client_id| SourceConfig::RefreshToken {
            path: path.into(),
            client_id,
            client_secret,
            auth,
            refresh_fraction: self.refresh_fraction,
        })
    }
}

/// The client secret in `client_secret_file` (`f`): read now, surrounding whitespace trimmed.
fn client_secret(s: &Section<'_>, f: &str) -> Option<crate::secret::SecretString> {
    match std::fs::read_to_string(f) {
        Ok(text) if !text.trim().is_empty() => Some(crate::secret::SecretString::from(text.trim())),
        Ok(_) => {
            s.error("client_secret_file", format!("{f:?} is empty"));
            None
        }
        Err(e) => {
            s.error("client_secret_file", format!("cannot read {f:?}: {e}"));
            None
        }
    }
}

/// `token_endpoint_auth`: `client_secret_post` (the default) or `client_secret_basic`.
fn client_auth(s: &Section<'_>, text: Option<&str>) -> ClientAuth {
    match text {
        None | Some("client_secret_post") => ClientAuth::Post,
        Some("client_secret_basic") => ClientAuth::Basic,
        Some(other) => {
            s.error(
                "token_endpoint_auth",
                format!("{other:?} is not \"client_secret_post\" or \"client_secret_basic\""),
            );
            ClientAuth::Post
        }
    }
}
