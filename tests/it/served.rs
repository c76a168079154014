//! What a served credential set must be, checked against the emulated Cognito's own records
//! (never the broker's state): issued by Cognito, to an identity whose only login is the
//! caller's user, for the role asked for, with the secret key and session token Cognito issued
//! with that access key, the same expiry, and at least `min_remaining` left.

use std::time::{Duration, SystemTime};

use credbroker::clock::format_aws_timestamp;
use credbroker::identity::Issued;
use credbroker_emulators::cognito::IssuedCredentials;

use crate::support::Harness;

/// `[cache] refresh_ahead` in every test that checks served credentials (the default).
const REFRESH_AHEAD: Duration = Duration::from_secs(30 * 60);

/// The least lifetime README's refresh policy promises for `record` with `[cache]
/// min_remaining` configured to `min_remaining` (and the default `refresh_ahead`): that value
/// while `refresh_ahead` fits in half the lifetime Cognito issued the set with, else the same
/// fraction of that lifetime. Computed from Cognito's record (when it issued the set, when the
/// set expires as written on the wire), never from the broker's state: an expiry truncated to
/// whole seconds makes a lifetime a little shorter than configured, and so scales the promise.
pub fn promised_min_remaining(record: &IssuedCredentials, min_remaining: Duration) -> Duration {
    let lifetime = record
        .expiration
        .duration_since(record.issued_at)
        .unwrap_or(Duration::ZERO);
    if REFRESH_AHEAD <= lifetime / 2 {
        min_remaining
    } else {
        min_remaining.mul_f64((lifetime / 2).as_secs_f64() / REFRESH_AHEAD.as_secs_f64())
    }
}

/// Checks `issued`, served at `now` to `subject` for `role_arn` by a broker configured with
/// `min_remaining`; returns Cognito's record.
pub fn verify(
    h: &Harness,
    subject: &str,
    role_arn: &str,
    issued: &Issued,
    now: SystemTime,
    min_remaining: Duration,
) -> Result<IssuedCredentials, String> {
    let key = issued.access_key_id();
    let record = h
        .cognito
        .lookup_access_key(key)
        .ok_or_else(|| format!("served access key {key} that Cognito never issued"))?;
    let owner = h.cognito.logins_of(&record.identity_id);
    if owner != [(h.issuer.logins_key(), subject.to_owned())] {
        return Err(format!(
            "{subject} was served {key} of identity {} whose logins are {owner:?}",
            record.identity_id
        ));
    }
    if issued.identity_id().as_ref() != record.identity_id {
        return Err(format!("{key}: identity id differs from Cognito's record"));
    }
    if issued.secret_access_key() != record.secret_key.expose_str()
        || issued.session_token() != record.session_token.expose_str()
    {
        return Err(format!(
            "{key}: secret key or session token is not the one Cognito issued with it"
        ));
    }
    if record.role_arn != role_arn {
        return Err(format!(
            "{subject} asked for {role_arn} and was served {key} for {}",
            record.role_arn
        ));
    }
    if issued.expiration() != format_aws_timestamp(record.expiration) {
        return Err(format!("{key}: Expiration differs from Cognito's"));
    }
    let left = remaining(&record, now);
    let min_remaining = promised_min_remaining(&record, min_remaining);
    if left < min_remaining {
        return Err(format!(
            "{key} served with {left:?} left, below min_remaining {min_remaining:?}"
        ));
    }
    Ok(record)
}

/// How long `record` is still valid at `now`.
pub fn remaining(record: &IssuedCredentials, now: SystemTime) -> Duration {
    record
        .expiration
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
}
