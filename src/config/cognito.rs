//! `[cognito]`: the identity pool, its region and the retry policy of Cognito calls.

use std::time::Duration;

use url::Url;

use super::{Section, check_http_url};

pub(super) const DEFAULT_COGNITO_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) const DEFAULT_COGNITO_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) const DEFAULT_COGNITO_MAX_ATTEMPTS: u64 = 3;

pub(super) const DEFAULT_COGNITO_BACKOFF_BASE: Duration = Duration::from_millis(100);

pub(super) const DEFAULT_COGNITO_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The Cognito identity pool.
#[derive(Debug, Clone)]
pub struct CognitoConfig {
    /// AWS region of the pool, e.g. `us-east-1`.
    pub region: String,
    /// `<region>:<uuid>`.
    pub identity_pool_id: String,
    /// Overrides the Cognito endpoint (the emulator, a VPC endpoint).
    pub endpoint_url: Option<Url>,
    /// `CustomRoleArn` sent with every GetCredentialsForIdentity, if set.
    pub custom_role_arn: Option<String>,
    /// Reported as `AccountId` in credentials responses, if set.
    pub account_id: Option<String>,
    /// Timeout of one attempt of one call.
    pub attempt_timeout: Duration,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Attempts per call for retryable errors (throttling, internal, external service, network).
    pub max_attempts: u32,
    /// First backoff; doubles per attempt, with full jitter.
    pub backoff_base: Duration,
    /// Largest backoff.
    pub backoff_max: Duration,
}

pub(super) fn build_cognito(s: &Section<'_>) -> Option<CognitoConfig> {
    if !s.exists() {
        s.error_here(
            "the [cognito] section is required: region and identity_pool_id of your identity pool",
        );
        return None;
    }
    let region = required_region(s);
    let pool = identity_pool_id(s, region.as_deref());
    let endpoint_url = endpoint_url(s);
    let custom_role_arn = custom_role_arn(s);
    let account_id = account_id(s);
    let (backoff_base, backoff_max) = backoff(s);
    Some(CognitoConfig {
        attempt_timeout: s.duration_in(
            "attempt_timeout",
            DEFAULT_COGNITO_ATTEMPT_TIMEOUT,
            Duration::from_millis(50),
            Duration::from_secs(120),
        ),
        connect_timeout: s.duration_in(
            "connect_timeout",
            DEFAULT_COGNITO_CONNECT_TIMEOUT,
            Duration::from_millis(50),
            Duration::from_secs(60),
        ),
        max_attempts: u32::try_from(s.u64_in("max_attempts", DEFAULT_COGNITO_MAX_ATTEMPTS, 1, 10))
            .ok()?,
        backoff_base,
        backoff_max,
        region: region?,
        identity_pool_id: pool?,
        endpoint_url: endpoint_url?,
        custom_role_arn: custom_role_arn?,
        account_id: account_id?,
    })
}

/// `region` (of `[cognito]` and of an AppSync API): required, an AWS region name.
pub(super) fn required_region(s: &Section<'_>) -> Option<String> {
    s.required_str("region").and_then(|r| {
        if is_region(&r) {
            Some(r)
        } else {
            s.error(
                "region",
                format!("{r:?} is not an AWS region name like \"us-east-1\""),
            );
            None
        }
    })
}

/// `identity_pool_id`: required, `<region>:<uuid>` in `region` (when that is valid).
fn identity_pool_id(s: &Section<'_>, region: Option<&str>) -> Option<String> {
    s.required_str("identity_pool_id").and_then(|id| {
        let Some((prefix, uuid)) = id.split_once(':') else {
            s.error(
                "identity_pool_id",
                format!("{id:?} is not an identity pool id; it looks like \"us-east-1:<uuid>\""),
            );
            return None;
        };
        if !is_uuid(uuid) {
            s.error(
                "identity_pool_id",
                format!("{id:?}: the part after ':' must be a UUID"),
            );
            return None;
        }
        if let Some(r) = region
            && r != prefix
        {
            s.error(
                "identity_pool_id",
                format!("pool {id:?} is in region {prefix:?} but cognito.region is {r:?}"),
            );
            return None;
        }
        Some(id)
    })
}

/// `endpoint_url`: `Some(None)` when absent, `None` when set but unusable.
fn endpoint_url(s: &Section<'_>) -> Option<Option<Url>> {
    let url =
        s.opt_str("endpoint_url")
            .and_then(|u| match check_http_url(&u, "the Cognito endpoint") {
                Ok(url) => Some(url),
                Err(msg) => {
                    s.error("endpoint_url", msg);
                    None
                }
            });
    if url.is_none() && s.has("endpoint_url") {
        None
    } else {
        Some(url)
    }
}

/// `custom_role_arn`: `Some(None)` when absent, `None` when not an IAM role ARN.
fn custom_role_arn(s: &Section<'_>) -> Option<Option<String>> {
    match s.opt_str("custom_role_arn") {
        Some(arn) if !is_role_arn(&arn) => {
            s.error(
                "custom_role_arn",
                format!("{arn:?} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)"),
            );
            None
        }
        arn => Some(arn),
    }
}

/// `account_id`: `Some(None)` when absent, `None` when not 12 digits.
fn account_id(s: &Section<'_>) -> Option<Option<String>> {
    match s.opt_str("account_id") {
        Some(a) if !(a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit())) => {
            s.error("account_id", "an AWS account id is 12 digits");
            None
        }
        a => Some(a),
    }
}

/// `backoff_base` and `backoff_max` (not smaller than the base).
fn backoff(s: &Section<'_>) -> (Duration, Duration) {
    let backoff_base = s.duration_in(
        "backoff_base",
        DEFAULT_COGNITO_BACKOFF_BASE,
        Duration::from_millis(1),
        Duration::from_secs(60),
    );
    let backoff_max = s.duration_in(
        "backoff_max",
        DEFAULT_COGNITO_BACKOFF_MAX,
        Duration::from_millis(1),
        Duration::from_secs(300),
    );
    if backoff_max < backoff_base {
        s.error("backoff_max", "must not be smaller than backoff_base");
    }
    (backoff_base, backoff_max)
}

pub(super) fn is_region(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    let Some((last, words)) = parts.split_last() else {
        return false;
    };
    parts.len() >= 3
        && words
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && !last.is_empty()
        && last.bytes().all(|b| b.is_ascii_digit())
}

pub(super) fn is_uuid(u: &str) -> bool {
    let groups: Vec<&str> = u.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub(crate) fn is_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [arn, partition, service, _region, account, resource] = parts.as_slice() else {
        return false;
    };
    *arn == "arn"
        && partition.starts_with("aws")
        && *service == "iam"
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && resource
            .strip_prefix("role/")
            .is_some_and(|n| !n.is_empty())
}
