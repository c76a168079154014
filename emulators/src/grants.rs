//! The emulated issuer's refresh-token book: clients, refresh-token families, rotation and
//! reuse detection, as Auth0 does them with rotation on.
//!
//! Owns: [`GrantBook`] (used by [`crate::oidc::OidcIssuer`]'s token endpoint) and its counters
//! ([`TokenEndpointStats`]).
//!
//! Promises:
//! - a refresh token belongs to one client and one family; with rotation on, each use returns a
//!   new token of the same family and retires the one used; using a retired token revokes the
//!   whole family (every token of it answers `invalid_grant` from then on);
//! - unknown, revoked and other clients' tokens answer `invalid_grant` with HTTP 403 and
//!   `Unknown or invalid refresh token.`, as Auth0 does; a wrong or missing client secret
//!   answers 401 `invalid_client`;
//! - tokens are stored as SHA-256 digests and never logged.

use std::collections::{HashMap, HashSet};

use rand::Rng as _;
use rand::distributions::Alphanumeric;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Counters of the token endpoint (HTTP and in-process requests alike).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEndpointStats {
    /// Grant requests, answered or refused.
    pub requests: u64,
    /// Successful grants.
    pub issued: u64,
    /// `invalid_grant` answers.
    pub invalid_grant: u64,
    /// `invalid_client` answers.
    pub invalid_client: u64,
    /// Retired tokens presented again (each revoked a family).
    pub reuse_detected: u64,
    /// Families revoked (reuse or [`GrantBook::revoke_family_of`]).
    pub families_revoked: u64,
    /// Refresh tokens issued (initial + rotated).
    pub refresh_tokens_issued: u64,
}

/// An OAuth error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// HTTP status.
    pub status: u16,
    /// The `error` code.
    pub error: &'static str,
    /// `error_description`.
    pub description: String,
}

impl OAuthError {
    fn new(status: u16, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
        }
    }
}

/// The outcome of a successful grant.
#[derive(Debug)]
pub struct Granted {
    /// The subject the family belongs to.
    pub sub: String,
    /// The client.
    pub client_id: String,
    /// The rotated refresh token (rotation on).
    pub refresh_token: Option<String>,
}

struct Grant {
    family: u64,
    sub: String,
    client_id: String,
    retired: bool,
}

/// Clients and refresh-token families.
pub struct GrantBook {
    clients: HashMap<String, Option<String>>,
    grants: HashMap<[u8; 32], Grant>,
    revoked: HashSet<u64>,
    next_family: u64,
    rotate: bool,
    stats: TokenEndpointStats,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn random_token() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(48)
        .map(char::from)
        .collect()
}

impl GrantBook {
    /// A book with one public client (`default_client`, no secret).
    pub fn new(default_client: &str, rotate: bool) -> Self {
        let mut clients = HashMap::new();
        clients.insert(default_client.to_owned(), None);
        Self {
            clients,
            grants: HashMap::new(),
            revoked: HashSet::new(),
            next_family: 1,
            rotate,
            stats: TokenEndpointStats::default(),
        }
    }

    /// Registers (or replaces) a client; `secret` makes it confidential.
    pub fn register_client(&mut self, client_id: &str, secret: Option<&str>) {
        self.clients
            .insert(client_id.to_owned(), secret.map(str::to_owned));
    }

    /// Issues the first refresh token of a new family (what a login with `offline_access`
    /// returns).
    pub fn issue(&mut self, sub: &str, client_id: &str) -> String {
        let family = self.next_family;
        self.next_family += 1;
        self.issue_in(family, sub, client_id)
    }

    fn issue_in(&mut self, family: u64, sub: &str, client_id: &str) -> String {
        let token = random_token();
        self.grants.insert(
            digest(&token),
            Grant {
                family,
                sub: sub.to_owned(),
                client_id: client_id.to_owned(),
                retired: false,
            },
        );
        self.stats.refresh_tokens_issued += 1;
        token
    }

    /// Revokes the family `token` belongs to. False when the token is unknown.
    pub fn revoke_family_of(&mut self, token: &str) -> bool {
        let Some(family) = self.grants.get(&digest(token)).map(|g| g.family) else {
            return false;
        };
        if self.revoked.insert(family) {
            self.stats.families_revoked += 1;
        }
        true
    }

    /// The counters.
    pub fn stats(&self) -> TokenEndpointStats {
        self.stats
    }

    /// Counts a request (also those refused before reaching the book).
    pub fn count_request(&mut self) {
        self.stats.requests += 1;
    }

    /// Redeems `refresh_token` for `client_id` authenticated with `secret`.
    pub fn redeem(
        &mut self,
        client_id: &str,
        secret: Option<&str>,
        refresh_token: &str,
    ) -> Result<Granted, OAuthError> {
        let result = self.redeem_inner(client_id, secret, refresh_token);
        match &result {
            Ok(_) => self.stats.issued += 1,
            Err(e) if e.error == "invalid_grant" => self.stats.invalid_grant += 1,
            Err(e) if e.error == "invalid_client" => self.stats.invalid_client += 1,
            Err(_) => {}
        }
        result
    }

    fn redeem_inner(
        &mut self,
        client_id: &str,
        secret: Option<&str>,
        refresh_token: &str,
    ) -> Result<Granted, OAuthError> {
        let client_ok = match self.clients.get(client_id) {
            None => false,
            Some(None) => true,
            Some(Some(expected)) => secret.is_some_and(|s| {
                subtle::ConstantTimeEq::ct_eq(s.as_bytes(), expected.as_bytes()).into()
            }),
        };
        if !client_ok {
            return Err(OAuthError::new(
                401,
                "invalid_client",
                "Client authentication failed.",
            ));
        }
        let invalid = || OAuthError::new(403, "invalid_grant", "Unknown or invalid refresh token.");
        let key = digest(refresh_token);
        let Some(grant) = self.grants.get_mut(&key) else {
            return Err(invalid());
        };
        if grant.client_id != client_id || self.revoked.contains(&grant.family) {
            return Err(invalid());
        }
        if grant.retired {
            let family = grant.family;
            self.stats.reuse_detected += 1;
            if self.revoked.insert(family) {
                self.stats.families_revoked += 1;
            }
            return Err(invalid());
        }
        let (family, sub, client) = (grant.family, grant.sub.clone(), grant.client_id.clone());
        let rotated = if self.rotate {
            grant.retired = true;
            Some(self.issue_in(family, &sub, &client))
        } else {
            None
        };
        Ok(Granted {
            sub,
            client_id: client,
            refresh_token: rotated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_retires_used_tokens_and_reuse_revokes_the_family() {
        let mut book = GrantBook::new("app", true);
        let first = book.issue("auth0|a", "app");
        let second = book.redeem("app", None, &first).expect("first use");
        let second = second.refresh_token.expect("rotated");
        let third = book
            .redeem("app", None, &second)
            .expect("second use")
            .refresh_token
            .expect("rotated");
        // Reusing the first token revokes the family: the newest dies too.
        let e = book.redeem("app", None, &first).expect_err("reuse");
        assert_eq!((e.status, e.error), (403, "invalid_grant"));
        assert_eq!(
            book.redeem("app", None, &third)
                .expect_err("family revoked")
                .error,
            "invalid_grant"
        );
        let s = book.stats();
        assert_eq!((s.issued, s.invalid_grant, s.reuse_detected), (2, 2, 1));
        assert_eq!(s.families_revoked, 1);
    }

    #[test]
    fn confidential_clients_must_authenticate() {
        let mut book = GrantBook::new("public", true);
        book.register_client("web", Some("s3cret"));
        let t = book.issue("auth0|b", "web");
        assert_eq!(
            book.redeem("web", None, &t).expect_err("no secret").error,
            "invalid_client"
        );
        assert_eq!(
            book.redeem("web", Some("wrong"), &t)
                .expect_err("bad")
                .status,
            401
        );
        assert_eq!(
            book.redeem("public", None, &t)
                .expect_err("other client")
                .error,
            "invalid_grant"
        );
        assert!(book.redeem("web", Some("s3cret"), &t).is_ok());
        assert_eq!(
            book.redeem("web", Some("s3cret"), "nope")
                .expect_err("unknown")
                .error,
            "invalid_grant"
        );
    }

    #[test]
    fn without_rotation_the_same_token_keeps_working_until_revoked() {
        let mut book = GrantBook::new("app", false);
        let t = book.issue("auth0|c", "app");
        for _ in 0..3 {
            assert!(
                book.redeem("app", None, &t)
                    .expect("ok")
                    .refresh_token
                    .is_none()
            );
        }
        assert!(book.revoke_family_of(&t));
        assert!(book.redeem("app", None, &t).is_err());
    }
}
