//! The doctor's token checks: the token file is readable, and credbroker's own validator
//! ([`crate::oidc::Validator::validate`]) accepts the token; each refusal with its fix.

use std::path::Path;
use std::sync::Arc;

use super::Check;
use crate::clock::{self, SharedClock};
use crate::config::Config;
use crate::credential_process::{TokenFile, read_token_file};
use crate::oidc::{TokenError, Validator, VerifiedToken};
use crate::sessions;

/// `token.file` and `token.validation`; the verified token when it is valid.
pub(super) async fn check(
    config: &Config,
    validator: &Validator,
    clock: &SharedClock,
    token_file: Option<&Path>,
    checks: &mut Vec<Check>,
) -> Option<Arc<VerifiedToken>> {
    let Some(path) = token_file else {
        checks.push(Check::skip(
            "token.validation",
            "skipped: needs --token-file (an ID token of a user)",
        ));
        return None;
    };
    let file = read(path, checks)?;
    let raw = file.token.expose_str();
    if sessions::is_handle(raw) {
        checks.push(Check::fail(
            "token.validation",
            "the file holds a session handle (cbs_…): only the daemon that issued it knows what \
             it stands for",
            "point --token-file at a file holding the user's ID token",
        ));
        return None;
    }
    validate(config, validator, clock, raw, checks).await
}

/// `token.file`: the file holds a token (a warning when whitespace surrounds it, which AWS SDKs
/// would send as it is).
fn read(path: &Path, checks: &mut Vec<Check>) -> Option<TokenFile> {
    let shown = path.display();
    let file = match read_token_file(path) {
        Ok(f) => f,
        Err(e) => {
            checks.push(Check::fail(
                "token.file",
                e.to_string(),
                "write the user's raw ID token to the file (what the application gets from the \
                 sign-in as id_token), and pass its path",
            ));
            checks.push(Check::skip("token.validation", "skipped: no token"));
            return None;
        }
    };
    if file.had_whitespace {
        checks.push(Check::warn(
            "token.file",
            format!("{shown} has whitespace around the token (a trailing newline?)"),
            "write the token without one, atomically (printf '%s' \"$ID_TOKEN\" > tmp && mv tmp \
             FILE): AWS SDKs send AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE as it is and fail on a \
             newline (credbroker credential-process strips it)",
        ));
    } else {
        checks.push(Check::ok(
            "token.file",
            format!("read {shown} ({} bytes)", file.token.len()),
        ));
    }
    Some(file)
}

/// `token.validation` by credbroker's own validator (and `token.validity`, a warning, when less
/// than `tokens.min_token_validity` is left).
async fn validate(
    config: &Config,
    validator: &Validator,
    clock: &SharedClock,
    raw: &str,
    checks: &mut Vec<Check>,
) -> Option<Arc<VerifiedToken>> {
    match validator.validate(raw).await {
        Ok(token) => {
            let now = clock.now();
            let left = clock::saturating_sub(token.expires_at, now);
            checks.push(Check::ok(
                "token.validation",
                format!(
                    "credbroker accepts the token: provider {}, iss {:?}, client {:?}, expires {} \
                     ({} min left)",
                    token.provider.config.name,
                    token.provider.config.issuer,
                    &*token.client_id,
                    clock::format_aws_timestamp(token.expires_at),
                    left.as_secs() / 60
                ),
            ));
            if left < config.tokens.min_token_validity {
                checks.push(Check::warn(
                    "token.validity",
                    format!(
                        "the token has less than tokens.min_token_validity ({}s) left",
                        config.tokens.min_token_validity.as_secs()
                    ),
                    "sign in again for a fresh token before it runs out",
                ));
            }
            Some(token)
        }
        Err(e) => {
            checks.push(
                Check::fail(
                    "token.validation",
                    format!("credbroker refuses the token ({}): {e}", e.code()),
                    fix(&e),
                )
                .with_code(e.code()),
            );
            None
        }
    }
}

/// What to change for each refusal.
fn fix(e: &TokenError) -> String {
    match e {
        TokenError::Symmetric { .. } => "switch the Auth0 application to RS256: Applications → \
             your app → Settings → Advanced Settings → OAuth → JSON Web Token (JWT) Signature \
             Algorithm = RS256, save, then sign in again (HS256 tokens can be verified only by \
             Auth0 itself; Cognito refuses them)"
            .to_owned(),
        TokenError::Unsigned => {
            "configure the issuer to sign ID tokens with RS256 (unsigned tokens can be forged by \
             anyone)"
                .to_owned()
        }
        TokenError::AlgorithmNotAllowed { alg, provider, .. } => format!(
            "have the issuer sign ID tokens with RS256 (the algorithm Cognito verifies), or add \
             {alg:?} to providers.{provider}.algorithms"
        ),
        TokenError::IssuerMismatch { iss, provider, .. } => format!(
            "set providers.{provider}.issuer = {iss:?}, exactly the token's iss (byte for byte: \
             the trailing slash matters)"
        ),
        TokenError::UnknownIssuer { iss, .. } => format!(
            "the token was issued by {iss:?}, which no provider is configured for: add a \
             [providers.<name>] with issuer = {iss:?}, or use a token of a configured issuer"
        ),
        TokenError::AudienceMismatch {
            audience, provider, ..
        } => format!(
            "add the application's Client ID (the token's {audience}) to \
             providers.{provider}.audiences, and to the Audiences of the IAM OpenID Connect \
             provider (Cognito checks it next)"
        ),
        TokenError::Expired { .. } => "sign in again and write the new ID token to the file \
             (Auth0 ID tokens live 10 hours by default)"
            .to_owned(),
        TokenError::NotYetValid { .. } => {
            "check the clock of this host (NTP) and of the issuer".to_owned()
        }
        TokenError::UnknownKeyId { provider, .. } => format!(
            "the token was signed with a key provider {provider} does not publish: is it a token \
             of another tenant or environment? Use a token from this issuer"
        ),
        TokenError::InvalidSignature { .. } => {
            "the token was altered, or signed by another key under the same kid: use a fresh \
             token from the issuer"
                .to_owned()
        }
        TokenError::ProviderUnavailable { provider, .. } => format!(
            "fix the provider.{provider}.* lines above first (credbroker could not load the \
             provider's keys)"
        ),
        TokenError::Malformed(_) => "the file must hold only the raw ID token \
             (header.payload.signature in base64url): not an access token, not JSON, no \
             \"Bearer \" prefix"
            .to_owned(),
        TokenError::MissingClaim { claim, .. } => format!(
            "the issuer must put {claim} in its ID tokens (is this an ID token, not an access \
             token?)"
        ),
        TokenError::MissingKeyId { provider } => format!(
            "configure provider {provider} to put the signing key's id (kid) in the header of \
             its ID tokens; Cognito picks the verification key by kid"
        ),
        TokenError::NotAnIdToken { .. } => "write the ID token to the file, not the access \
             token (a User Pool's AuthenticationResult.IdToken, the id_token of an OAuth token \
             response)"
            .to_owned(),
        // The remaining (and any new) refusals say what to change in their message.
        _ => "the message says what to change".to_owned(),
    }
}
