//! What one exchange produced ([`Issued`]: the container-format body, built once) and when
//! to renew it ([`Policy`] → [`Plan`]: the threshold maths, scaled for short lifetimes).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::clock;
use crate::cognito::RawCredentials;
use crate::config::CacheConfig;
use crate::metrics::Surface;
use crate::secret::{REDACTED, ZeroizingBytes};

use super::MIN_REFRESH_INTERVAL;

/// The effective thresholds for one credential set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Serve until then (expiry minus the effective `min_remaining`).
    pub serve_until: SystemTime,
    /// Refresh in the background from then.
    pub refresh_at: SystemTime,
    /// The effective `min_remaining`.
    pub min_remaining: Duration,
}

/// The refresh policy (from `[cache]`).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Configured `min_remaining`.
    pub min_remaining: Duration,
    /// Configured `refresh_ahead`.
    pub refresh_ahead: Duration,
    /// Configured `refresh_jitter`.
    pub refresh_jitter: Duration,
}

impl Policy {
    /// From configuration.
    pub fn from_config(c: &CacheConfig) -> Self {
        Self {
            min_remaining: c.min_remaining,
            refresh_ahead: c.refresh_ahead,
            refresh_jitter: c.refresh_jitter,
        }
    }

    /// Thresholds for credentials obtained at `obtained` that expire at `expires`; `jitter01`
    /// in `[0, 1)`. `None` when they are already expired.
    pub fn plan(&self, obtained: SystemTime, expires: SystemTime, jitter01: f64) -> Option<Plan> {
        let lifetime = expires.duration_since(obtained).ok()?;
        if lifetime.is_zero() {
            return None;
        }
        // Configured thresholds apply while refresh_ahead fits in half the lifetime; beyond
        // that all three shrink by the same factor (moto's 90 s credentials, short dev pools).
        let scale = if self.refresh_ahead <= lifetime / 2 {
            1.0
        } else {
            (lifetime / 2).as_secs_f64() / self.refresh_ahead.as_secs_f64()
        };
        let min_remaining = self.min_remaining.mul_f64(scale);
        let ahead = self.refresh_ahead.mul_f64(scale);
        let jitter = self
            .refresh_jitter
            .mul_f64(scale)
            .min(ahead.saturating_sub(min_remaining) / 2);
        let refresh_at = (expires - ahead + jitter.mul_f64(jitter01.clamp(0.0, 1.0)))
            .max(obtained + MIN_REFRESH_INTERVAL.min(lifetime / 2));
        Some(Plan {
            serve_until: expires - min_remaining,
            refresh_at,
            min_remaining,
        })
    }
}

/// A credential set as served: the container-credentials JSON body is built once, and the fields
/// are slices of it (one allocation, zeroized when the last reference goes).
pub struct Issued {
    identity_id: Arc<str>,
    body: Bytes,
    /// Where each field sits in `body` (32-bit offsets: a body is a few KB).
    access_key_id: Range<u32>,
    secret_access_key: Range<u32>,
    token: Range<u32>,
    expiration: Range<u32>,
    /// When Cognito says they expire.
    pub expires_at: SystemTime,
    /// When credbroker received them.
    pub obtained_at: SystemTime,
    /// Thresholds.
    pub plan: Plan,
    /// Surfaces this set was already handed out on (bit per surface), for the audit log.
    served_on: AtomicU8,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("identity_id", &self.identity_id)
            .field("access_key_id", &self.access_key_id())
            .field("secret_access_key", &REDACTED)
            .field("token", &REDACTED)
            .field("expiration", &self.expiration())
            .finish()
    }
}

/// Why a credential set could not be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IssueError {
    /// The upstream returned credentials that are already expired.
    #[error("Cognito returned credentials that expired at {0}")]
    AlreadyExpired(String),
    /// A field contains characters that cannot appear in AWS credentials.
    #[error("Cognito returned a malformed {0}")]
    MalformedField(&'static str),
}

impl Issued {
    /// Builds the served form of `raw`.
    pub fn new(
        identity_id: Arc<str>,
        raw: &RawCredentials,
        account_id: Option<&str>,
        obtained_at: SystemTime,
        policy: &Policy,
        jitter01: f64,
    ) -> Result<Self, IssueError> {
        let expiration_text = clock::format_aws_timestamp(raw.expiration);
        let plan = policy
            .plan(obtained_at, raw.expiration, jitter01)
            .ok_or_else(|| IssueError::AlreadyExpired(expiration_text.clone()))?;
        fn plain(value: &str, what: &'static str) -> Result<(), IssueError> {
            if value.is_empty()
                || value
                    .bytes()
                    .any(|b| !(0x21..0x7f).contains(&b) || b == b'"' || b == b'\\')
            {
                Err(IssueError::MalformedField(what))
            } else {
                Ok(())
            }
        }
        plain(&raw.access_key_id, "AccessKeyId")?;
        plain(raw.secret_key.expose_str(), "SecretKey")?;
        plain(raw.session_token.expose_str(), "SessionToken")?;
        if let Some(a) = account_id {
            plain(a, "AccountId")?;
        }
        // Exact enough never to grow: 67 bytes of keys and punctuation, 16 more with AccountId.
        let capacity = 72
            + expiration_text.len()
            + raw.access_key_id.len()
            + raw.secret_key.len()
            + raw.session_token.len()
            + account_id.map_or(0, |a| 16 + a.len());
        let mut body = Vec::with_capacity(capacity);
        // An offset past 4 GiB (never: Cognito's fields are a few KB) reads back as "".
        let offset = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let field = |body: &mut Vec<u8>, prefix: &str, value: &str| -> Range<u32> {
            body.extend_from_slice(prefix.as_bytes());
            let start = offset(body.len());
            body.extend_from_slice(value.as_bytes());
            let range = start..offset(body.len());
            body.push(b'"');
            range
        };
        let access_key_id = field(&mut body, "{\"AccessKeyId\":\"", &raw.access_key_id);
        let secret_access_key = field(
            &mut body,
            ",\"SecretAccessKey\":\"",
            raw.secret_key.expose_str(),
        );
        let token = field(&mut body, ",\"Token\":\"", raw.session_token.expose_str());
        let expiration = field(&mut body, ",\"Expiration\":\"", &expiration_text);
        if let Some(a) = account_id {
            field(&mut body, ",\"AccountId\":\"", a);
        }
        body.push(b'}');
        debug_assert!(body.len() <= capacity, "the body outgrew its allocation");
        Ok(Self {
            identity_id,
            body: Bytes::from_owner(ZeroizingBytes(body)),
            access_key_id,
            secret_access_key,
            token,
            expiration,
            expires_at: raw.expiration,
            obtained_at,
            plan,
            served_on: AtomicU8::new(0),
        })
    }

    pub(super) fn slice(&self, r: &Range<u32>) -> &str {
        self.body
            .get(r.start as usize..r.end as usize)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }

    /// The Cognito identity id.
    pub fn identity_id(&self) -> &Arc<str> {
        &self.identity_id
    }
    /// `AccessKeyId`.
    pub fn access_key_id(&self) -> &str {
        self.slice(&self.access_key_id)
    }
    /// `SecretAccessKey` (Cognito's `SecretKey`). A secret: never log it.
    pub fn secret_access_key(&self) -> &str {
        self.slice(&self.secret_access_key)
    }
    /// `Token` (Cognito's `SessionToken`). A secret: never log it.
    pub fn session_token(&self) -> &str {
        self.slice(&self.token)
    }
    /// `Expiration` as `YYYY-MM-DDTHH:MM:SSZ`.
    pub fn expiration(&self) -> &str {
        self.slice(&self.expiration)
    }
    /// The container-credentials response body (shared, not copied).
    pub fn container_body(&self) -> Bytes {
        self.body.clone()
    }
    /// Whether these credentials may still be served at `now`.
    pub fn servable_at(&self, now: SystemTime) -> bool {
        now < self.plan.serve_until
    }
    /// Marks the set as handed out on `surface`; true the first time (one audit line each).
    pub fn first_served_on(&self, surface: Surface) -> bool {
        let bit = 1u8 << (surface as u8);
        self.served_on.load(Ordering::Relaxed) & bit == 0
            && self.served_on.fetch_or(bit, Ordering::Relaxed) & bit == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    pub(super) fn policy() -> Policy {
        Policy {
            min_remaining: Duration::from_secs(20 * 60),
            refresh_ahead: Duration::from_secs(30 * 60),
            refresh_jitter: Duration::from_secs(5 * 60),
        }
    }

    #[test]
    pub(super) fn one_hour_credentials_use_configured_thresholds() {
        let p = policy().plan(t(0), t(3600), 0.0).expect("plan");
        assert_eq!(p.serve_until, t(40 * 60));
        assert_eq!(p.refresh_at, t(30 * 60));
        let late = policy().plan(t(0), t(3600), 0.999).expect("plan");
        assert!(late.refresh_at > t(34 * 60) && late.refresh_at < t(35 * 60));
        assert!(late.refresh_at < late.serve_until);
    }

    #[test]
    pub(super) fn short_lifetimes_scale_thresholds_to_a_fraction() {
        // moto's 90 s credentials.
        let p = policy().plan(t(0), t(90), 0.0).expect("plan");
        assert_eq!(p.min_remaining, Duration::from_secs(30));
        assert_eq!(p.refresh_at, t(45));
        assert!(p.refresh_at < p.serve_until);
        // Even 2 s credentials refresh no sooner than a second later.
        let tiny = policy().plan(t(0), t(2), 0.5).expect("plan");
        assert!(tiny.refresh_at >= t(1) && tiny.refresh_at < tiny.serve_until);
    }

    #[test]
    pub(super) fn expired_credentials_have_no_plan() {
        assert!(policy().plan(t(10), t(10), 0.0).is_none());
        assert!(policy().plan(t(10), t(5), 0.0).is_none());
    }

    #[test]
    pub(super) fn issued_body_is_the_exact_container_format_and_debug_redacts() {
        let raw = RawCredentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_key: "secret/key+1".into(),
            session_token: "session-token-value".into(),
            expiration: t(3600),
        };
        let issued = Issued::new(
            "us-east-1:id".into(),
            &raw,
            Some("123456789012"),
            t(0),
            &policy(),
            0.0,
        )
        .expect("issued");
        let body: serde_json::Value =
            serde_json::from_slice(&issued.container_body()).expect("json");
        assert_eq!(
            body,
            serde_json::json!({
                "AccessKeyId": "ASIAEXAMPLE",
                "SecretAccessKey": "secret/key+1",
                "Token": "session-token-value",
                "Expiration": "2023-11-14T23:13:20Z",
                "AccountId": "123456789012",
            })
        );
        assert_eq!(issued.secret_access_key(), "secret/key+1");
        let debug = format!("{issued:?}");
        assert!(
            !debug.contains("secret/key") && !debug.contains("session-token"),
            "{debug}"
        );
    }

    #[test]
    pub(super) fn malformed_upstream_fields_are_refused() {
        let raw = RawCredentials {
            access_key_id: "ASIA\"X".into(),
            secret_key: "s".into(),
            session_token: "t".into(),
            expiration: t(3600),
        };
        assert!(Issued::new("id".into(), &raw, None, t(0), &policy(), 0.0).is_err());
    }
}
