//! Minimal JSON Web Token encoding and RS256 verification for the emulators.
//!
//! Owns: compact-serialization JWT assembly (base64url header and claims, signature), signing
//! with RS256 (RSASSA-PKCS1-v1_5 + SHA-256), ES256 (P-256, the raw 64-byte `r || s` signature
//! JWS requires, not DER), HS256 and `alg: none`, and decoding plus RS256 verification for the
//! Cognito emulator.
//!
//! Promises: this code is deliberately independent of the broker's own token validator, so a
//! mistake in one is not silently mirrored by the other. It interprets nothing beyond the JOSE
//! structure: claim checks belong to the callers.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rsa::RsaPublicKey;
use rsa::signature::{SignatureEncoding, Signer as _, Verifier as _};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::Sha256;

/// A JOSE header in the field order Auth0 writes it: `alg`, `typ`, `kid`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Header {
    /// The `alg` value, e.g. `RS256`.
    pub(crate) alg: String,
    /// Always `JWT`.
    pub(crate) typ: &'static str,
    /// The key id, when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) kid: Option<String>,
}

/// How to sign a token.
pub(crate) enum Signer<'a> {
    /// RS256 with an RSA private key.
    Rs256(&'a rsa::pkcs1v15::SigningKey<Sha256>),
    /// ES256 with a P-256 private key.
    Es256(&'a p256::ecdsa::SigningKey),
    /// HS256 with a shared secret.
    Hs256(&'a [u8]),
    /// No signature at all (`alg: none`).
    None,
}

/// Base64url without padding, as JWS requires.
pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `base64url(header) . base64url(claims)`: the bytes a JWS signature covers.
pub(crate) fn signing_input(header: &Header, claims: &Map<String, Value>) -> String {
    // Serializing a struct of strings and a map of JSON values cannot fail.
    let header = serde_json::to_vec(header).unwrap_or_default();
    let claims = serde_json::to_vec(claims).unwrap_or_default();
    format!("{}.{}", b64(&header), b64(&claims))
}

/// Signs `input` and returns the raw JWS signature bytes.
pub(crate) fn sign(input: &str, signer: &Signer<'_>) -> Vec<u8> {
    match signer {
        Signer::Rs256(key) => key.sign(input.as_bytes()).to_vec(),
        Signer::Es256(key) => {
            let signature: p256::ecdsa::Signature = key.sign(input.as_bytes());
            signature.to_bytes().to_vec()
        }
        Signer::Hs256(secret) => hmac_sha256(secret, input.as_bytes()),
        Signer::None => Vec::new(),
    }
}

/// Joins a signing input and a signature into a compact JWT.
pub(crate) fn assemble(input: &str, signature: &[u8]) -> String {
    format!("{input}.{}", b64(signature))
}

/// HMAC-SHA-256 of `message` under `key`.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// Why a string is not a JWT in compact serialization.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// Not exactly three dot-separated segments.
    #[error("a JWT has three dot-separated segments")]
    Segments,
    /// A segment is not base64url without padding.
    #[error("segment is not base64url")]
    Base64,
    /// The header or claims are not a JSON object.
    #[error("header or claims are not a JSON object")]
    Json,
}

/// A decoded but not yet verified JWT.
#[derive(Debug, Clone)]
pub(crate) struct Decoded {
    /// The JOSE header.
    pub(crate) header: Map<String, Value>,
    /// The claims.
    pub(crate) claims: Map<String, Value>,
    /// `header.claims` as it appeared in the token: what the signature covers.
    pub(crate) signing_input: String,
    /// The raw signature bytes (empty for `alg: none`).
    pub(crate) signature: Vec<u8>,
}

impl Decoded {
    /// The header's `alg`, if it is a string.
    pub(crate) fn alg(&self) -> Option<&str> {
        self.header.get("alg").and_then(Value::as_str)
    }

    /// The header's `kid`, if it is a string.
    pub(crate) fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }
}

/// Splits and decodes a compact JWT without verifying anything.
pub(crate) fn decode(token: &str) -> Result<Decoded, DecodeError> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(DecodeError::Segments);
    };
    let object = |segment: &str| -> Result<Map<String, Value>, DecodeError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(segment)
            .map_err(|_| DecodeError::Base64)?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(DecodeError::Json),
        }
    };
    Ok(Decoded {
        header: object(header)?,
        claims: object(claims)?,
        signing_input: format!("{header}.{claims}"),
        signature: URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| DecodeError::Base64)?,
    })
}

/// Whether `signature` is a valid RS256 signature of `signing_input` under `key`.
pub(crate) fn verify_rs256(key: &RsaPublicKey, signing_input: &str, signature: &[u8]) -> bool {
    let Ok(signature) = rsa::pkcs1v15::Signature::try_from(signature) else {
        return false;
    };
    rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key.clone())
        .verify(signing_input.as_bytes(), &signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::DecodePrivateKey as _;

    fn claims() -> Map<String, Value> {
        let mut claims = Map::new();
        claims.insert("sub".into(), "auth0|abc".into());
        claims.insert("exp".into(), 1_700_000_000.into());
        claims
    }

    fn header(alg: &str) -> Header {
        Header {
            alg: alg.into(),
            typ: "JWT",
            kid: Some("k1".into()),
        }
    }

    #[test]
    fn rs256_round_trip_and_rejects_changes() {
        let private = rsa::RsaPrivateKey::from_pkcs8_pem(include_str!("keys/rsa1.pem"))
            .expect("embedded key parses");
        let public = private.to_public_key();
        let key = rsa::pkcs1v15::SigningKey::<Sha256>::new(private);
        let input = signing_input(&header("RS256"), &claims());
        let token = assemble(&input, &sign(&input, &Signer::Rs256(&key)));

        let decoded = decode(&token).expect("decodes");
        assert_eq!(decoded.alg(), Some("RS256"));
        assert_eq!(decoded.kid(), Some("k1"));
        assert_eq!(decoded.claims, claims());
        assert_eq!(decoded.signature.len(), 256);
        assert!(verify_rs256(
            &public,
            &decoded.signing_input,
            &decoded.signature
        ));

        let other = rsa::RsaPrivateKey::from_pkcs8_pem(include_str!("keys/rsa2.pem"))
            .expect("embedded key parses")
            .to_public_key();
        assert!(!verify_rs256(
            &other,
            &decoded.signing_input,
            &decoded.signature
        ));
        let mut changed = claims();
        changed.insert("sub".into(), "auth0|evil".into());
        let forged = signing_input(&header("RS256"), &changed);
        assert!(!verify_rs256(&public, &forged, &decoded.signature));
        assert!(!verify_rs256(&public, &decoded.signing_input, &[]));
    }

    #[test]
    fn header_is_written_in_auth0_order() {
        let input = signing_input(&header("RS256"), &claims());
        let (header_b64, _) = input.split_once('.').expect("two segments");
        let json = URL_SAFE_NO_PAD.decode(header_b64).expect("base64url");
        assert_eq!(json, br#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#);
    }

    #[test]
    fn es256_signature_is_raw_r_s_and_verifies() {
        use p256::ecdsa::signature::Verifier as _;
        let key = p256::ecdsa::SigningKey::from_pkcs8_pem(include_str!("keys/ec1.pem"))
            .expect("embedded key parses");
        let input = signing_input(&header("ES256"), &claims());
        let signature = sign(&input, &Signer::Es256(&key));
        assert_eq!(signature.len(), 64, "JWS ES256 is r || s, not DER");
        let parsed = p256::ecdsa::Signature::from_slice(&signature).expect("r || s");
        key.verifying_key()
            .verify(input.as_bytes(), &parsed)
            .expect("verifies");
    }

    #[test]
    fn hs256_matches_rfc_4231_vector_and_none_is_empty() {
        // RFC 4231 test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            mac.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let input = signing_input(&header("none"), &claims());
        let token = assemble(&input, &sign(&input, &Signer::None));
        assert!(token.ends_with('.'));
        assert!(decode(&token).expect("decodes").signature.is_empty());
    }

    #[test]
    fn decode_rejects_malformed_tokens() {
        assert_eq!(decode("abc").err(), Some(DecodeError::Segments));
        assert_eq!(decode("a.b.c.d").err(), Some(DecodeError::Segments));
        assert_eq!(decode("!!.e30.").err(), Some(DecodeError::Base64));
        // "W10" is `[]`: JSON, but not an object.
        assert_eq!(decode("W10.e30.").err(), Some(DecodeError::Json));
        assert!(decode("e30.e30.").is_ok());
    }
}
