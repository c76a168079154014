//! The `realtime` target: what an AppSync real-time client sends credbroker, through the
//! functions the upgrade and the relay read it with (`credbroker::appsync::realtime::protocol`)
//! and the rewrite of a `start` towards AppSync (`protocol::start` of the start's id and data,
//! with `auth::start_authorization` as the relay builds it, OIDC and IAM).
//!
//! Input: one byte choosing what the rest is (its value modulo 3), then the rest:
//!
//! - 0, an encoded header as a `header-` subprotocol or `?header=` value carries it;
//! - 1, a token: placed in `{"Authorization": <token>, "host": …}` and encoded in every form
//!   clients send (base64url, standard base64 with and without padding, percent-escaped, a
//!   form decoder's spaces for `+`);
//! - 2, a client frame (`connection_init`, `start`, `stop`, anything); bit 7 of the first byte
//!   picks IAM mode for the rewrite.
//!
//! The oracles: no panic; a decoded `Authorization` decodes again from its own encoding; a token
//! comes back exactly from every client form (within the size limit); a start the relay would
//! forward is rebuilt with the caller's id and data and credbroker's authorization as its only
//! extension (compared as JSON), and the same start with an authorization planted in its
//! `extensions` never carries that text upstream; signing a start's data never fails.

use std::time::Duration;

use aws_credential_types::Credentials;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use credbroker::appsync::realtime::protocol::{
    self, Envelope, HeaderProblem, MAX_HEADER_JSON, header_authorization,
};
use credbroker::appsync::realtime::{Credential, Target, auth};
use credbroker::secret::SecretString;
use serde_json::{Value, json};

/// What a test caller plants as its own authorization.
const CANARY: &str = "caller-planted-authorization-0f5a";

/// A raw ID token (the OIDC rewrite forwards it verbatim; it is never parsed here).
const ID_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhdXRoMHxhbGljZSJ9.c2lnbmF0dXJl";

/// The rewrite's two upstream authentications and the API they are for.
pub struct RealtimeWorld {
    target: Target,
    oidc: Credential,
    iam: Credential,
}

impl Default for RealtimeWorld {
    fn default() -> Self {
        Self::new()
    }
}

impl RealtimeWorld {
    /// An IAM-capable API on a custom domain with a port (the `host` is `host:port`).
    pub fn new() -> Self {
        let text = crate::config_text(
            "https://issuer.example/",
            "client",
            None,
            r#"
[appsync.apis.main]
url = "https://api.example.com:8443/graphql"
region = "eu-west-1"
auth = "iam"
default = true
"#,
        );
        let config = credbroker::config::Config::from_toml(&text).expect("fuzz config");
        let target = Target::new(&config.appsync.apis[0]).expect("a target");
        let expires = crate::t0() + Duration::from_secs(3600);
        Self {
            target,
            oidc: Credential::IdToken {
                raw: SecretString::from(ID_TOKEN),
                digest: [7; 32],
                expires_at: expires,
            },
            iam: Credential::Iam(Credentials::new(
                "ASIAFUZZEXAMPLE00001",
                "fuzz/secret/access/key/0000000000000000",
                Some("FwoGZXIvYXdzEFUZZsessiontoken".to_owned()),
                Some(expires),
                "fuzz",
            )),
        }
    }

    /// One input.
    pub fn run(&self, input: &[u8]) {
        let Some((&mode, rest)) = input.split_first() else {
            return;
        };
        let text = String::from_utf8_lossy(rest);
        match mode % 3 {
            0 => encoded_header(&text),
            1 => token_in_every_form(&text),
            _ => self.frame(&text, mode & 0x80 != 0),
        }
    }

    fn frame(&self, text: &str, iam: bool) {
        let Some(envelope) = Envelope::parse(text) else {
            return;
        };
        // What the relay answers any type with echoes the id as JSON.
        let echoed: Value = serde_json::from_str(&protocol::error(
            envelope.id(),
            "UnsupportedOperation",
            "unknown message type",
        ))
        .expect("an error is JSON");
        assert_eq!(echoed.get("id").and_then(Value::as_str), envelope.id());
        if envelope.kind() == "stop"
            && let Some(id) = envelope.id()
        {
            let complete: Value = serde_json::from_str(&protocol::complete(id)).expect("JSON");
            assert_eq!(complete, json!({ "type": "complete", "id": id }));
        }
        if envelope.kind() != "start" || self.rewrite(&envelope, text, iam).is_none() {
            return;
        }
        // The same start with a caller's authorization planted in its extensions.
        // (Text the relay reads as an envelope may hold what `Value` refuses, like `1e400`.)
        let Ok(mut planted) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let Some(payload) = planted.get_mut("payload").and_then(Value::as_object_mut) else {
            return;
        };
        payload.insert(
            "extensions".to_owned(),
            json!({ "authorization": { "Authorization": CANARY, "host": "evil.example" },
                    "x-api-key": CANARY }),
        );
        let planted = planted.to_string();
        let envelope = Envelope::parse(&planted).expect("still an envelope");
        let (id, data, rewritten) = self
            .rewrite(&envelope, &planted, iam)
            .expect("still a start");
        if !id.contains(CANARY) && !data.contains(CANARY) {
            assert!(
                !rewritten.contains(CANARY),
                "the caller's authorization reached AppSync"
            );
        }
    }

    /// The start the relay would send AppSync for a client's `start`, if it forwards one.
    fn rewrite(
        &self,
        envelope: &Envelope,
        text: &str,
        iam: bool,
    ) -> Option<(String, String, String)> {
        let id = protocol::start_id(envelope)?;
        let data = protocol::start_data(text)?;
        if let Ok(sent) = serde_json::from_str::<Value>(text) {
            assert_eq!(sent["payload"]["data"].as_str(), Some(data.as_str()));
        }
        let credential = if iam { &self.iam } else { &self.oidc };
        let ours = auth::start_authorization(&self.target, credential, &data, crate::t0())
            .expect("signing a start's data never fails");
        let rewritten = protocol::start(id, &data, ours.clone());
        let upstream: Value = serde_json::from_str(&rewritten).expect("the rewrite is JSON");
        let expected = json!({ "id": id, "type": "start", "payload": {
            "data": data, "extensions": { "authorization": ours } } });
        assert_eq!(upstream, expected, "only id and data survive the rewrite");
        Some((id.to_owned(), data, rewritten))
    }
}

fn encoded_header(text: &str) {
    let verdict = header_authorization(text);
    let object = protocol::decode_object(text);
    match &verdict {
        Err(HeaderProblem::TooLarge) => assert!(text.len() > MAX_HEADER_JSON / 3 * 4 + 16),
        Err(HeaderProblem::NotAnObject) => assert!(object.is_none()),
        Err(HeaderProblem::NoAuthorization | HeaderProblem::NotAString) => {
            assert!(object.is_some())
        }
        Ok(token) => {
            let again = URL_SAFE_NO_PAD.encode(json!({ "Authorization": token }).to_string());
            if again.len() <= MAX_HEADER_JSON / 3 * 4 + 16 {
                assert_eq!(
                    header_authorization(&again).as_ref(),
                    Ok(token),
                    "round trip"
                );
            }
        }
    }
}

fn token_in_every_form(token: &str) {
    let json = json!({ "Authorization": token, "host": "api.example.com" }).to_string();
    let std = STANDARD.encode(&json);
    let forms = [
        URL_SAFE_NO_PAD.encode(&json),
        std.clone(),
        STANDARD_NO_PAD.encode(&json),
        std.replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D"),
        std.replace('+', " "),
        std.bytes().map(|b| format!("%{b:02X}")).collect(),
    ];
    for (i, form) in forms.iter().enumerate() {
        let verdict = header_authorization(form);
        if form.len() > MAX_HEADER_JSON / 3 * 4 + 16 {
            assert_eq!(verdict, Err(HeaderProblem::TooLarge), "form {i}");
        } else {
            assert_eq!(
                verdict.as_deref(),
                Ok(token),
                "form {i} gives the token back"
            );
        }
    }
}
