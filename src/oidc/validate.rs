//! The validation pipeline behind [`Validator::validate`](super::Validator::validate): parse,
//! claims (`iss`, `aud`/`azp`, `exp`/`nbf`/`iat`, `token_use`), key by `kid`, signature.

use crate::clock;
use crate::config::{Algorithm, algorithm_refusal};
use crate::secret::SecretString;
use base64::Engine as _;
use openidconnect::core::CoreJwsSigningAlgorithm;
use openidconnect::{JsonWebKey, SignatureVerificationError};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::error::TokenError;
use super::provider::KeySet;
use super::provider::Provider;
use super::provider::Refetch;
use super::{NOT_LOADED_RETRY_AFTER, Validator, VerifiedToken, seconds_up};

/// The parts of a compact JWS this module reads.
pub(super) struct Parsed<'a> {
    pub(super) alg: String,
    pub(super) kid: Option<String>,
    pub(super) typ: Option<String>,
    pub(super) claims: serde_json::Map<String, Value>,
    pub(super) signing_input: &'a str,
    pub(super) signature: Vec<u8>,
}

pub(super) const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

pub(super) fn parse(raw: &str) -> Result<Parsed<'_>, TokenError> {
    let segments: Vec<&str> = raw.split('.').collect();
    if segments.len() == 5 {
        return Err(TokenError::Malformed(
            "it is an encrypted JWT (JWE); configure the provider to sign ID tokens without \
             encrypting them"
                .to_owned(),
        ));
    }
    let [header_b64, claims_b64, signature_b64] = segments.as_slice() else {
        return Err(TokenError::Malformed(
            "expected three base64url segments separated by '.' (header.payload.signature)"
                .to_owned(),
        ));
    };
    let decode_json =
        |part: &str, what: &str| -> Result<serde_json::Map<String, Value>, TokenError> {
            let bytes = B64
                .decode(part)
                .map_err(|_| TokenError::Malformed(format!("the {what} is not base64url")))?;
            match serde_json::from_slice(&bytes) {
                Ok(Value::Object(map)) => Ok(map),
                _ => Err(TokenError::Malformed(format!(
                    "the {what} is not a JSON object"
                ))),
            }
        };
    let header = decode_json(header_b64, "header")?;
    let claims = decode_json(claims_b64, "payload")?;
    let signature = B64
        .decode(signature_b64)
        .map_err(|_| TokenError::Malformed("the signature is not base64url".to_owned()))?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => {
            return Err(TokenError::Malformed(
                "the header has no \"alg\"".to_owned(),
            ));
        }
    };
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(TokenError::Malformed("\"kid\" is not a string".to_owned())),
    };
    let typ = match header.get("typ") {
        Some(Value::String(t)) => Some(t.clone()),
        _ => None,
    };
    if header.contains_key("crit") {
        return Err(TokenError::Malformed(
            "critical header parameters (\"crit\") are not supported".to_owned(),
        ));
    }
    // header '.' payload: everything before the last '.' (there are exactly two).
    let signing_input = raw.rsplit_once('.').map_or(raw, |(input, _)| input);
    Ok(Parsed {
        alg,
        kid,
        typ,
        claims,
        signing_input,
        signature,
    })
}

pub(super) fn string_claim(
    claims: &serde_json::Map<String, Value>,
    claim: &'static str,
) -> Result<Option<String>, TokenError> {
    match claims.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(TokenError::MissingClaim {
            claim,
            problem: "not a string".to_owned(),
        }),
    }
}

pub(super) fn time_claim(
    claims: &serde_json::Map<String, Value>,
    claim: &'static str,
) -> Result<Option<SystemTime>, TokenError> {
    match claims.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let secs = n.as_f64().unwrap_or(f64::NAN);
            if !secs.is_finite() || !(0.0..=1e11).contains(&secs) {
                return Err(TokenError::MissingClaim {
                    claim,
                    problem: format!("out of range ({n})"),
                });
            }
            Ok(Some(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs)))
        }
        Some(_) => Err(TokenError::MissingClaim {
            claim,
            problem: "not a number of seconds since the epoch".to_owned(),
        }),
    }
}

/// Refuses access tokens: a Cognito User Pool's (`token_use` other than `id`) and RFC 9068
/// ones (`typ: at+jwt`). Both would be refused by Cognito, which wants ID tokens.
pub(super) fn check_token_use(parsed: &Parsed<'_>) -> Result<(), TokenError> {
    if let Some(typ) = &parsed.typ {
        let t = typ.to_ascii_lowercase();
        if t == "at+jwt" || t == "application/at+jwt" {
            return Err(TokenError::NotAnIdToken {
                what: format!("typ {typ:?}"),
            });
        }
    }
    match parsed.claims.get("token_use") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(u)) if u == "id" => Ok(()),
        Some(other) => Err(TokenError::NotAnIdToken {
            what: format!("token_use {other}"),
        }),
    }
}

/// `Ok` when a token expiring at `exp` has at least `min` left at `now`.
pub(super) fn remaining_validity(
    exp: SystemTime,
    now: SystemTime,
    min: Duration,
) -> Result<(), TokenError> {
    if now >= exp {
        return Err(TokenError::Expired {
            expired_at: exp,
            ago: clock::saturating_sub(now, exp),
        });
    }
    let left = clock::saturating_sub(exp, now);
    if left < min {
        return Err(TokenError::ExpiresSoon {
            expires_at: exp,
            left,
            min,
        });
    }
    Ok(())
}

pub(super) fn core_alg(alg: Algorithm) -> CoreJwsSigningAlgorithm {
    match alg {
        Algorithm::Rs256 => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        Algorithm::Rs384 => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
        Algorithm::Rs512 => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
        Algorithm::Ps256 => CoreJwsSigningAlgorithm::RsaSsaPssSha256,
        Algorithm::Es256 => CoreJwsSigningAlgorithm::EcdsaP256Sha256,
        Algorithm::Es384 => CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    }
}

impl Validator {
    pub(super) async fn validate_uncached(
        &self,
        raw: &str,
        now: SystemTime,
        provider_name: &mut Option<String>,
    ) -> Result<Arc<VerifiedToken>, TokenError> {
        let parsed = parse(raw)?;
        if parsed.alg.eq_ignore_ascii_case("none") {
            return Err(TokenError::Unsigned);
        }
        if parsed.alg.to_ascii_uppercase().starts_with("HS") {
            return Err(TokenError::Symmetric {
                alg: parsed.alg.clone(),
            });
        }
        let iss = string_claim(&parsed.claims, "iss")?.ok_or(TokenError::MissingClaim {
            claim: "iss",
            problem: "missing".to_owned(),
        })?;
        let provider = self.provider_for(&iss)?;
        *provider_name = Some(provider.config.name.clone());
        let alg = Algorithm::from_jose(&parsed.alg)
            .filter(|a| provider.config.algorithms.contains(a))
            .ok_or_else(|| {
                if Algorithm::from_jose(&parsed.alg).is_none() {
                    TokenError::Malformed(algorithm_refusal(&parsed.alg))
                } else {
                    TokenError::AlgorithmNotAllowed {
                        alg: parsed.alg.clone(),
                        provider: provider.config.name.clone(),
                        allowed: provider.algorithms_text(),
                    }
                }
            })?;

        let missing = |claim| TokenError::MissingClaim {
            claim,
            problem: "missing".to_owned(),
        };
        check_token_use(&parsed)?;
        let exp = time_claim(&parsed.claims, "exp")?.ok_or_else(|| missing("exp"))?;
        remaining_validity(exp, now, self.config.min_token_validity)?;
        let leeway = self.config.leeway;
        for claim in ["nbf", "iat"] {
            if let Some(t) = time_claim(&parsed.claims, claim)?
                && t > now + leeway
            {
                return Err(TokenError::NotYetValid {
                    claim,
                    valid_from: t,
                });
            }
        }
        let subject = string_claim(&parsed.claims, "sub")?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| missing("sub"))?;
        let client_id = self.check_audience(&provider, &parsed.claims)?;
        let generation = provider.withdrawals.load(Ordering::Acquire);
        self.check_signature(&provider, &parsed, alg).await?;

        Ok(Arc::new(VerifiedToken {
            provider,
            subject: subject.into(),
            expires_at: exp,
            raw: SecretString::from(raw),
            client_id,
            generation,
            resolved: std::sync::OnceLock::new(),
        }))
    }

    pub(super) fn provider_for(&self, iss: &str) -> Result<Arc<Provider>, TokenError> {
        if let Some(p) = self.by_issuer.get(iss) {
            return Ok(p.clone());
        }
        let trimmed = iss.trim_end_matches('/');
        if let Some(p) = self
            .providers
            .iter()
            .find(|p| p.config.issuer.trim_end_matches('/') == trimmed)
        {
            return Err(TokenError::IssuerMismatch {
                iss: iss.to_owned(),
                provider: p.config.name.clone(),
                configured: p.config.issuer.clone(),
            });
        }
        Err(TokenError::UnknownIssuer {
            iss: iss.to_owned(),
            configured: self
                .providers
                .iter()
                .map(|p| format!("{:?}", p.config.issuer))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Checks `aud`/`azp` against the accepted audiences; returns the accepted client id.
    pub(super) fn check_audience(
        &self,
        provider: &Provider,
        claims: &serde_json::Map<String, Value>,
    ) -> Result<Arc<str>, TokenError> {
        let accepted = &provider.audiences;
        let audiences: Vec<String> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            None | Some(Value::Null) => Vec::new(),
            Some(_) => {
                return Err(TokenError::MissingClaim {
                    claim: "aud",
                    problem: "not a string or a list of strings".to_owned(),
                });
            }
        };
        let azp = string_claim(claims, "azp")?;
        let known = |client: &str| accepted.iter().find(|a| ***a == *client).cloned();
        let client = match &azp {
            Some(azp) => known(azp),
            None => audiences.iter().find_map(|a| known(a)),
        };
        if let Some(client) = client {
            return Ok(client);
        }
        if audiences.is_empty() && azp.is_none() {
            return Err(TokenError::MissingClaim {
                claim: "aud",
                problem: "missing".to_owned(),
            });
        }
        let audience = match azp {
            Some(azp) => format!("azp {azp:?}"),
            None => format!("aud {audiences:?}"),
        };
        Err(TokenError::AudienceMismatch {
            audience,
            provider: provider.config.name.clone(),
            accepted: format!("{accepted:?}"),
        })
    }

    pub(super) async fn check_signature(
        &self,
        provider: &Provider,
        parsed: &Parsed<'_>,
        alg: Algorithm,
    ) -> Result<(), TokenError> {
        let Some(kid) = &parsed.kid else {
            return Err(TokenError::MissingKeyId {
                provider: provider.config.name.clone(),
            });
        };
        let keys = keys_holding(provider, kid).await?;
        verify_signature(provider, &keys, kid, alg, parsed)
    }
}

/// The provider's keys, with `kid` among them: refetched (rate-limited) when `kid` is unknown.
/// Unavailable when no keys could be loaded, or a refetch needed to tell a rotated key from a
/// bad token failed; `UnknownKeyId` when fresh keys lack it.
async fn keys_holding(provider: &Provider, kid: &str) -> Result<Arc<KeySet>, TokenError> {
    let name = &provider.config.name;
    let unavailable = || TokenError::ProviderUnavailable {
        provider: name.clone(),
        reason: format!(
            "its keys could not be loaded yet ({}); credbroker keeps retrying",
            provider
                .last_error()
                .unwrap_or_else(|| "no attempt finished yet".to_owned())
        ),
        retry_after: NOT_LOADED_RETRY_AFTER,
    };
    let mut keys = provider.keys.load_full().ok_or_else(unavailable)?;
    if keys.kids.contains(kid) {
        return Ok(keys);
    }
    match provider.refetch_for_unknown_kid(kid).await {
        Refetch::Fetched => keys = provider.keys.load_full().ok_or_else(unavailable)?,
        Refetch::Failed(e) => {
            return Err(TokenError::ProviderUnavailable {
                provider: name.clone(),
                reason: format!(
                    "the token's kid {kid:?} is not among the keys credbroker holds, \
                     and refetching the JWKS failed ({e}), so a newly rotated key \
                     cannot be told from a bad token; retry in {} s",
                    seconds_up(provider.refetch_interval).as_secs()
                ),
                retry_after: seconds_up(provider.refetch_interval),
            });
        }
        Refetch::Suppressed {
            last_failed: Some(e),
            retry_in,
        } => {
            return Err(TokenError::ProviderUnavailable {
                provider: name.clone(),
                reason: format!(
                    "the token's kid {kid:?} is not among the keys credbroker holds, \
                     and the last JWKS fetch failed ({e}); the next refetch is allowed \
                     in {} s (tokens.jwks_refetch_interval)",
                    retry_in.as_secs()
                ),
                retry_after: retry_in,
            });
        }
        // A JWKS fetched successfully within the interval lacks the key.
        Refetch::Suppressed {
            last_failed: None, ..
        } => {}
    }
    if !keys.kids.contains(kid) {
        return Err(TokenError::UnknownKeyId {
            kid: kid.to_owned(),
            provider: name.clone(),
            refetch_interval: provider.refetch_interval,
        });
    }
    Ok(keys)
}

/// Whether a key of `keys` with `kid` verifies the signature with `alg`; else why not.
fn verify_signature(
    provider: &Provider,
    keys: &KeySet,
    kid: &str,
    alg: Algorithm,
    parsed: &Parsed<'_>,
) -> Result<(), TokenError> {
    let core = core_alg(alg);
    let mut detail = format!("no published key can verify {}", alg.as_str());
    for key in keys.jwks.keys() {
        if key.key_id().map(|k| k.as_str()) != Some(kid) {
            continue;
        }
        match key.verify_signature(&core, parsed.signing_input.as_bytes(), &parsed.signature) {
            Ok(()) => return Ok(()),
            Err(SignatureVerificationError::InvalidKey(_)) => {}
            Err(SignatureVerificationError::CryptoError(_)) => {
                detail = "the signature does not match (the token was altered or signed by \
                          another key)"
                    .to_owned();
            }
            Err(other) => detail = other.to_string(),
        }
    }
    Err(TokenError::InvalidSignature {
        provider: provider.config.name.clone(),
        detail,
    })
}
