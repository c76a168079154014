//! AppSync's real-time protocol (`graphql-ws`): message envelopes, the messages credbroker
//! writes itself, close codes, and the base64 forms clients put authorization in.
//!
//! Owns: what the relay parses (only `type`, `id` and a start's `payload.data`; everything else
//! is forwarded as received) and the exact shapes of credbroker's own messages.
//!
//! Promises: credbroker's own refusals never use the `Unauthorized*` error types (Amplify
//! treats those as "drop the subscription"), close reasons stay within the 123 bytes a close
//! frame allows, and decoding never panics on any input.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The subprotocol both sides speak.
pub const SUBPROTOCOL: &str = "graphql-ws";

/// Largest decoded authorization JSON accepted from a subprotocol or the query.
pub const MAX_HEADER_JSON: usize = 16 * 1024;

/// Close codes credbroker sends to clients (RFC 6455 §7.4; 4000–4999 are private).
pub mod close {
    /// The client closed, or AppSync refused the connection (`connection_error`).
    pub const NORMAL: u16 = 1000;
    /// credbroker is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A binary frame (the protocol is JSON text).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A message larger than `max_message_bytes`, either way.
    pub const TOO_BIG: u16 = 1009;
    /// AppSync was lost, went silent, or could not be reached.
    pub const INTERNAL: u16 = 1011;
    /// The client read too slowly (`send_timeout`).
    pub const TRY_AGAIN: u16 = 1013;
    /// A raw ID token is about to expire: reconnect with a fresh one.
    pub const TOKEN_EXPIRING: u16 = 4001;
    /// A renewable connection could not re-authenticate before its deadline: reconnect.
    pub const RENEWAL_FAILED: u16 = 4002;
    /// The session was revoked or ended: sign in again.
    pub const SESSION_ENDED: u16 = 4401;
}

/// The reason text of each credbroker close.
pub mod reason {
    /// [`super::close::GOING_AWAY`].
    pub const GOING_AWAY: &str = "credbroker is shutting down";
    /// [`super::close::TOKEN_EXPIRING`].
    pub const TOKEN_EXPIRING: &str = "TokenExpiring: reconnect with a fresh ID token";
    /// [`super::close::RENEWAL_FAILED`].
    pub const RENEWAL_FAILED: &str = "RenewalFailed: reconnect";
    /// [`super::close::SESSION_ENDED`].
    pub const SESSION_ENDED: &str = "SessionEnded: sign in again";
    /// [`super::close::TOO_BIG`].
    pub const TOO_BIG: &str = "message larger than appsync.realtime.max_message_bytes";
    /// [`super::close::UNSUPPORTED_DATA`].
    pub const BINARY: &str = "binary frames are not part of the protocol";
    /// [`super::close::INTERNAL`], AppSync's connection ended without a usable close code.
    pub const UPSTREAM_LOST: &str = "AppSync connection lost";
    /// [`super::close::INTERNAL`], no `ka` from AppSync within its `connectionTimeoutMs`.
    pub const UPSTREAM_SILENT: &str = "AppSync stopped sending keep-alives";
    /// [`super::close::INTERNAL`], AppSync could not be reached.
    pub const UPSTREAM_UNAVAILABLE: &str = "AppSync is unavailable";
    /// [`super::close::TRY_AGAIN`].
    pub const TOO_SLOW: &str = "the client reads too slowly";
}

/// The two fields of every message the relay routes by.
#[derive(Debug, Deserialize)]
pub struct Envelope {
    /// `type`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// `id` (subscription messages).
    #[serde(default)]
    pub id: Option<Value>,
}

impl Envelope {
    /// Parses `text`'s envelope; `None` when it is not JSON (an array reads as no type).
    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }

    /// The type, `""` when absent.
    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or_default()
    }

    /// The id when it is a string.
    pub fn id(&self) -> Option<&str> {
        self.id.as_ref().and_then(Value::as_str)
    }
}

/// `{"payload":{"data":…}}` of a start (nothing else of it is read).
#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    payload: Option<StartPayload>,
}

#[derive(Deserialize)]
struct StartPayload {
    #[serde(default)]
    data: Option<Value>,
}

/// A start's id, when it is usable ([`valid_id`]).
pub fn start_id(envelope: &Envelope) -> Option<&str> {
    envelope.id().filter(|id| valid_id(id))
}

/// A start's `payload.data`, when it is a string. Only this and the id are taken from a
/// client's start: the start sent upstream is [`start`] of them.
pub fn start_data(text: &str) -> Option<String> {
    match serde_json::from_str::<StartMessage>(text)
        .ok()?
        .payload?
        .data?
    {
        Value::String(data) => Some(data),
        _ => None,
    }
}

/// `{"type":"connection_init"}`.
pub fn connection_init() -> String {
    json!({ "type": "connection_init" }).to_string()
}

/// `{"type":"connection_ack","payload":{"connectionTimeoutMs":…}}`.
pub fn connection_ack(timeout_ms: u128) -> String {
    json!({ "type": "connection_ack", "payload": { "connectionTimeoutMs": timeout_ms } })
        .to_string()
}

/// `{"type":"ka"}`.
pub fn ka() -> String {
    json!({ "type": "ka" }).to_string()
}

/// An `error` (with the subscription's id, or connection-level without).
pub fn error(id: Option<&str>, error_type: &str, message: &str) -> String {
    let errors = json!([{ "errorType": error_type, "message": message }]);
    match id {
        Some(id) => json!({ "type": "error", "id": id, "payload": { "errors": errors } }),
        None => json!({ "type": "error", "payload": { "errors": errors } }),
    }
    .to_string()
}

/// A `connection_error` with an HTTP-like `errorCode`.
pub fn connection_error(error_type: &str, message: &str, code: u16) -> String {
    json!({ "type": "connection_error", "payload": { "errors": [{
        "errorType": error_type, "message": message, "errorCode": code }] } })
    .to_string()
}

/// `{"type":"complete","id":…}`.
pub fn complete(id: &str) -> String {
    json!({ "type": "complete", "id": id }).to_string()
}

/// `{"type":"stop","id":…}`.
pub fn stop(id: &str) -> String {
    json!({ "type": "stop", "id": id }).to_string()
}

/// A `start` carrying `data` unchanged and `authorization` as its only extension.
pub fn start(id: &str, data: &str, authorization: Value) -> String {
    json!({ "id": id, "type": "start", "payload": {
        "data": data, "extensions": { "authorization": authorization } } })
    .to_string()
}

/// base64url without padding, as the `header-` subprotocol carries JSON.
pub fn encode_header(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// Decodes a base64 JSON object as clients send it: standard or URL-safe alphabet, padded or
/// not, `%XX` escapes decoded first (old Amplify pastes standard base64 unescaped into the
/// query, so `+` stays `+`; a space is taken for a `+` a form decoder mangled).
pub fn decode_object(text: &str) -> Option<Map<String, Value>> {
    let unescaped = percent_decode(text)?;
    let cleaned: String = unescaped
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '-' | ' ' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    let bytes = STANDARD_NO_PAD.decode(cleaned).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// Why a `header-` subprotocol or `?header=` value carries no usable `Authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderProblem {
    /// Longer than [`MAX_HEADER_JSON`] could encode to.
    TooLarge,
    /// Not base64 of a JSON object ([`decode_object`]).
    NotAnObject,
    /// No `Authorization` key (any case).
    NoAuthorization,
    /// An `Authorization` that is not a string.
    NotAString,
}

/// The `Authorization` of an encoded header object, as sent (not trimmed).
pub fn header_authorization(encoded: &str) -> Result<String, HeaderProblem> {
    // base64 is 4 characters per 3 bytes; a little slack for escapes and padding.
    if encoded.len() > MAX_HEADER_JSON / 3 * 4 + 16 {
        return Err(HeaderProblem::TooLarge);
    }
    let object = decode_object(encoded).ok_or(HeaderProblem::NotAnObject)?;
    match get_ignore_case(&object, "authorization") {
        None => Err(HeaderProblem::NoAuthorization),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(HeaderProblem::NotAString),
    }
}

/// `%XX` escapes decoded; `None` for a broken escape or a result that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The value of `key` in `object`, compared case-insensitively (header names are).
pub fn get_ignore_case<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// Whether `id` is usable as a subscription id: 1 to 128 visible ASCII characters.
pub fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    #[test]
    fn headers_decode_in_every_form_clients_send() {
        let json = r#"{"Authorization":"a+b/c?>>","host":"h"}"#;
        let forms = [
            URL_SAFE_NO_PAD.encode(json),
            STANDARD.encode(json),
            STANDARD_NO_PAD.encode(json),
            STANDARD
                .encode(json)
                .replace('+', "%2B")
                .replace('=', "%3D"),
            STANDARD.encode(json).replace('+', " "),
        ];
        for form in forms {
            let object = decode_object(&form).unwrap_or_else(|| panic!("{form}"));
            assert_eq!(
                get_ignore_case(&object, "authorization"),
                Some(&json!("a+b/c?>>"))
            );
        }
        for broken in ["%", "%zz", "not base64!", &STANDARD.encode("[1]"), "é"] {
            assert!(decode_object(broken).is_none(), "{broken}");
        }
    }

    #[test]
    fn ids_and_envelopes() {
        assert!(valid_id("0b9e-1"));
        assert!(!valid_id(""));
        assert!(!valid_id("has space"));
        assert!(!valid_id(&"x".repeat(129)));
        assert!(!valid_id("ü"));
        let e = Envelope::parse(r#"{"type":"data","id":"s1","payload":{}}"#).expect("parses");
        assert_eq!((e.kind(), e.id()), ("data", Some("s1")));
        assert!(Envelope::parse("not json").is_none());
        assert_eq!(
            Envelope::parse("[]")
                .map(|e| e.kind().to_owned())
                .as_deref(),
            Some("")
        );
        for r in [
            reason::GOING_AWAY,
            reason::TOKEN_EXPIRING,
            reason::TOO_BIG,
            reason::UPSTREAM_SILENT,
        ] {
            assert!(r.len() <= 123);
        }
    }
}
