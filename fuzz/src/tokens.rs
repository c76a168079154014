//! The `id_token` target: raw or assembled ID tokens through [`Validator::validate`], against
//! the emulated issuer's published keys, with an independent check of every accepted token.
//!
//! Input: one mode byte, then
//! - mode 0: the raw token text;
//! - mode 1: `header JSON 0xFF claims JSON 0xFF signature bytes`, each part base64url-encoded
//!   by the harness (so the fuzzer works on JSON, not on base64);
//! - mode 2: `header JSON 0xFF claims JSON`, signed by the harness with the issuer's published
//!   ES256 key (the only way past the signature check, to reach what follows it);
//! - mode 3: as mode 1, but the third part is used as is (base64 decoding of the signature).
//!
//! In modes 1–3 the header and claims may say `@ISS@` (the issuer), `@AUD@` (the accepted
//! client id), `@KID@` / `@ECKID@` (the RSA / EC key ids), `@T0@` and `@EXP@` (T0 and an hour
//! later, in epoch seconds).
//!
//! The oracle: a token the validator accepts must carry a signature that verifies with a key
//! the issuer publishes (checked here with `rsa` / `p256` directly), `iss` equal to the issuer,
//! an accepted audience, `sub` equal to the verified subject, and `exp` not past.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use credbroker::clock::SharedClock;
use credbroker::oidc::{Validator, VerifiedToken};
use credbroker_emulators::oidc::OidcIssuer;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use serde_json::Value;

/// The emulated issuer and a validator trusting it.
pub struct TokenWorld {
    rt: tokio::runtime::Runtime,
    issuer: OidcIssuer,
    validator: Arc<Validator>,
    clock: SharedClock,
    leeway: Duration,
    ec: p256::ecdsa::SigningKey,
    ec_kid: String,
    rsa_kid: String,
}

impl TokenWorld {
    /// Starts the issuer and loads its keys (the only socket use of the target).
    pub fn new() -> Self {
        let rt = crate::runtime();
        let clock = crate::frozen();
        let (issuer, config, validator) = rt.block_on(crate::issuer_and_validator(
            |i| crate::config_text(i.issuer(), i.audience(), None, ""),
            clock.clone(),
        ));
        let jwks = issuer.jwks_json();
        let ec_kid = jwks["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["kty"] == "EC"))
            .and_then(|k| k["kid"].as_str())
            .expect("the issuer publishes its EC key")
            .to_owned();
        let ec = <p256::ecdsa::SigningKey as p256::pkcs8::DecodePrivateKey>::from_pkcs8_pem(
            include_str!("../../emulators/src/keys/ec1.pem"),
        )
        .expect("the emulator's EC key");
        Self {
            rsa_kid: issuer.current_kid(),
            leeway: config.tokens.leeway,
            rt,
            issuer,
            validator,
            clock,
            ec,
            ec_kid,
        }
    }

    /// The token `input` stands for (see the module docs).
    pub fn token(&self, input: &[u8]) -> Option<String> {
        let (&mode, rest) = input.split_first()?;
        if mode % 4 == 0 {
            return Some(String::from_utf8_lossy(rest).into_owned());
        }
        let t0 = crate::T0_SECS.to_string();
        let exp = (crate::T0_SECS + 3600).to_string();
        let pairs: [(&[u8], &[u8]); 6] = [
            (b"@ISS@", self.issuer.issuer().as_bytes()),
            (b"@AUD@", self.issuer.audience().as_bytes()),
            (b"@ECKID@", self.ec_kid.as_bytes()),
            (b"@KID@", self.rsa_kid.as_bytes()),
            (b"@T0@", t0.as_bytes()),
            (b"@EXP@", exp.as_bytes()),
        ];
        let parts = crate::split_n(rest, 0xFF, 3);
        let header = crate::substitute(parts.first().copied().unwrap_or_default(), &pairs);
        let claims = crate::substitute(parts.get(1).copied().unwrap_or_default(), &pairs);
        let third = parts.get(2).copied().unwrap_or_default();
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&header),
            URL_SAFE_NO_PAD.encode(&claims)
        );
        let signature = match mode % 4 {
            1 => URL_SAFE_NO_PAD.encode(third),
            2 => {
                let sig: p256::ecdsa::Signature = self.ec.sign(signing_input.as_bytes());
                URL_SAFE_NO_PAD.encode(sig.to_bytes())
            }
            _ => String::from_utf8_lossy(third).into_owned(),
        };
        Some(format!("{signing_input}.{signature}"))
    }

    /// Validates the token of `input` and checks the oracle.
    pub fn run(&self, input: &[u8]) {
        let Some(raw) = self.token(input) else { return };
        let result = self.rt.block_on(self.validator.validate(&raw));
        if let Ok(token) = result {
            self.check_accepted(&raw, &token);
        }
    }

    fn check_accepted(&self, raw: &str, token: &VerifiedToken) {
        let mut segments = raw.split('.');
        let (Some(h), Some(c), Some(s), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            panic!("accepted a token that is not three segments");
        };
        let decode = |part: &str| {
            base64::engine::GeneralPurpose::new(
                &base64::alphabet::URL_SAFE,
                base64::engine::GeneralPurposeConfig::new()
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
            )
            .decode(part)
            .expect("accepted token segments are base64url")
        };
        let header: Value = serde_json::from_slice(&decode(h)).expect("header JSON");
        let claims: Value = serde_json::from_slice(&decode(c)).expect("claims JSON");
        let signature = decode(s);
        let input = &raw.as_bytes()[..h.len() + 1 + c.len()];
        let kid = header["kid"].as_str();
        let verified = match header["alg"].as_str() {
            Some("ES256") => {
                kid.is_none_or(|k| k == self.ec_kid)
                    && p256::ecdsa::Signature::from_slice(&signature)
                        .is_ok_and(|sig| self.ec.verifying_key().verify(input, &sig).is_ok())
            }
            Some("RS256") => kid
                .and_then(|k| self.issuer.verifying_key(k))
                .is_some_and(|key| {
                    use sha2::Digest as _;
                    let digest = sha2::Sha256::digest(input);
                    key.verify(
                        rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
                        &digest,
                        &signature,
                    )
                    .is_ok()
                }),
            other => panic!("accepted alg {other:?}, which the provider does not allow"),
        };
        assert!(verified, "accepted a token whose signature does not verify");
        assert_eq!(claims["iss"].as_str(), Some(self.issuer.issuer()), "iss");
        assert_eq!(claims["sub"].as_str(), Some(&*token.subject), "sub");
        assert!(!token.subject.is_empty(), "empty sub accepted");
        let audience = self.issuer.audience();
        let aud_ok = match (&claims["azp"], &claims["aud"]) {
            (Value::String(azp), _) => azp == audience,
            (_, Value::String(a)) => a == audience,
            (_, Value::Array(items)) => items.iter().any(|a| a == audience),
            _ => false,
        };
        assert!(aud_ok, "accepted a token for another audience");
        let exp = claims["exp"]
            .as_f64()
            .expect("accepted without a numeric exp");
        let exp = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(exp);
        assert!(
            exp + self.leeway > self.clock.now(),
            "accepted an expired token"
        );
        assert_eq!(token.expires_at, exp, "expires_at is the exp claim");
    }
}

impl Default for TokenWorld {
    fn default() -> Self {
        Self::new()
    }
}
