//! Which GraphQL operation types a request carries, for `allowed_operations`.
//!
//! Owns: [`check`], run on a request body before it is forwarded to an API that sets
//! `allowed_operations`.
//!
//! Promises:
//! - **types, not names**: an operation's *name* is chosen by the client and proves nothing, so
//!   `allowed_operations` lists types (`query`, `mutation`, `subscription`); what a user may do
//!   field by field belongs in the AppSync schema's auth rules;
//! - **every** operation in the document must be of an allowed type, not just the one
//!   `operationName` selects, so no choice of `operationName` can smuggle a mutation through;
//! - the document is lexed as GraphQL (strings, block strings, comments, nested braces and
//!   parentheses), so braces or keywords inside strings and comments do not confuse it; a body
//!   that is not `{"query": "<document>", ...}` JSON, or a document this reader cannot follow,
//!   is refused, never forwarded unchecked.

use serde_json::Value;

use crate::config::OperationType;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OperationError {
    /// The document holds an operation of a type the API does not allow.
    #[error("{found} operations are not allowed on this API (allowed: {allowed})")]
    NotAllowed {
        /// The offending type.
        found: &'static str,
        /// The allowed types, comma-separated.
        allowed: String,
    },
    /// The body or document could not be read.
    #[error("cannot read the GraphQL request: {0}")]
    Unreadable(String),
}

/// Refuses `body` unless every operation in its document has a type in `allowed`.
pub fn check(body: &[u8], allowed: &[OperationType]) -> Result<(), OperationError> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| OperationError::Unreadable(format!("the body is not JSON: {e}")))?;
    let document = request
        .get("query")
        .and_then(Value::as_str)
        .ok_or_else(|| OperationError::Unreadable("the body has no \"query\" string".to_owned()))?;
    let types = operation_types(document).map_err(OperationError::Unreadable)?;
    if types.is_empty() {
        return Err(OperationError::Unreadable(
            "the document defines no operation".to_owned(),
        ));
    }
    match types.into_iter().find(|t| !allowed.contains(t)) {
        Some(t) => Err(OperationError::NotAllowed {
            found: t.as_str(),
            allowed: allowed
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
        None => Ok(()),
    }
}

#[derive(Debug, PartialEq)]
enum Tok<'a> {
    Name(&'a str),
    Open(u8),
    Close(u8),
    Other,
}

/// The tokens of a GraphQL document that matter for structure.
fn lex(doc: &str) -> Result<Vec<Tok<'_>>, String> {
    let bytes = doc.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' if doc[i..].starts_with("\"\"\"") => {
                i += 3;
                loop {
                    if i >= bytes.len() {
                        return Err("unterminated block string".to_owned());
                    }
                    if doc[i..].starts_with("\\\"\"\"") {
                        i += 4;
                    } else if doc[i..].starts_with("\"\"\"") {
                        i += 3;
                        break;
                    } else {
                        i += 1;
                    }
                }
                out.push(Tok::Other);
            }
            b'"' => {
                i += 1;
                loop {
                    match bytes.get(i) {
                        None | Some(b'\n') | Some(b'\r') => {
                            return Err("unterminated string".to_owned());
                        }
                        Some(b'\\') => i += 2,
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
                out.push(Tok::Other);
            }
            b'{' | b'(' | b'[' => {
                out.push(Tok::Open(b));
                i += 1;
            }
            b'}' | b')' | b']' => {
                out.push(Tok::Close(b));
                i += 1;
            }
            b if b.is_ascii_alphabetic() || b == b'_' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                out.push(Tok::Name(&doc[start..i]));
            }
            _ => {
                if !(b.is_ascii_whitespace() || b == b',') {
                    out.push(Tok::Other);
                }
                i += 1;
            }
        }
    }
    Ok(out)
}

/// The type of every operation definition in `doc`, in order (`{…}` shorthand is a query).
pub fn operation_types(doc: &str) -> Result<Vec<OperationType>, String> {
    let tokens = lex(doc)?;
    let mut types = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        // At the top level: a definition starts.
        let kind = match tokens[i] {
            Tok::Open(b'{') => Some(OperationType::Query),
            Tok::Name(word) => match OperationType::from_keyword(word) {
                Some(t) => Some(t),
                None if word == "fragment" => None,
                None => return Err(format!("unexpected {word:?} at the top level")),
            },
            _ => return Err("unexpected token at the top level".to_owned()),
        };
        if let Some(t) = kind {
            types.push(t);
        }
        // Skip to this definition's selection set (the first `{` outside parentheses and
        // brackets) and past its matching `}`.
        let mut depth: Vec<u8> = Vec::new();
        let mut entered = false;
        loop {
            let Some(tok) = tokens.get(i) else {
                return Err("unbalanced braces".to_owned());
            };
            i += 1;
            match tok {
                Tok::Open(b) => {
                    if *b == b'{' && depth.iter().all(|d| *d == b'{') {
                        entered = true;
                    }
                    depth.push(*b);
                }
                Tok::Close(b) => {
                    let open = depth.pop().ok_or("unbalanced braces")?;
                    let expected = match b {
                        b'}' => b'{',
                        b')' => b'(',
                        _ => b'[',
                    };
                    if open != expected {
                        return Err("mismatched brackets".to_owned());
                    }
                    if entered && depth.is_empty() {
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;
    use OperationType::{Mutation, Query, Subscription};

    #[test]
    fn finds_every_operation_type() {
        assert_eq!(operation_types("{ listTodos { id } }"), Ok(vec![Query]));
        assert_eq!(
            operation_types(
                "query A($x: T = {a: \"}\"}) @d(y: [1]) { f(s: \"mutation {\") { id } }\n\
                 # mutation { evil }\n\
                 fragment F on Todo { id }\n\
                 mutation B { createTodo(content: \"\"\"a } b\"\"\") { id } }\n\
                 subscription C { onCreate { id } }"
            ),
            Ok(vec![Query, Mutation, Subscription])
        );
        assert!(operation_types("query { a ").is_err());
        assert!(operation_types("query { a ) }").is_err());
        assert!(operation_types("bogus { a }").is_err());
    }

    #[test]
    fn check_refuses_any_disallowed_operation_whatever_operation_name_says() {
        let body = serde_json::json!({
            "query": "query Safe { listTodos { id } } mutation Evil { createTodo(content: \"x\") { id } }",
            "operationName": "Safe",
        })
        .to_string();
        assert_eq!(
            check(body.as_bytes(), &[Query]),
            Err(OperationError::NotAllowed {
                found: "mutation",
                allowed: "query".into()
            })
        );
        assert_eq!(check(body.as_bytes(), &[Query, Mutation]), Ok(()));
        assert!(matches!(
            check(b"not json", &[Query]),
            Err(OperationError::Unreadable(_))
        ));
        assert!(matches!(
            check(b"{\"query\": \"\"}", &[Query]),
            Err(OperationError::Unreadable(_))
        ));
    }
}
