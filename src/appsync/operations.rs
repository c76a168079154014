//! Which GraphQL operation types a request carries, for `allowed_operations`.
//!
//! Owns: [`check`], run on a request body before it is forwarded to an API that sets
//! `allowed_operations`, and the parser limits [`RECURSION_LIMIT`] and [`TOKEN_LIMIT`].
//!
//! Promises:
//! - **types, not names**: an operation's *name* is chosen by the client and proves nothing, so
//!   `allowed_operations` lists types (`query`, `mutation`, `subscription`); what a user may do
//!   field by field belongs in the AppSync schema's auth rules;
//! - **every** operation in the document must be of an allowed type, not just the one
//!   `operationName` selects, so no choice of `operationName` can smuggle a mutation through.
//!   AppSync, like the GraphQL spec's `GetOperation`, executes the operation `operationName`
//!   names (or the only one); since all of them are checked, whichever it picks is allowed, and
//!   `operationName` itself is not read beyond refusing it twice;
//! - the document is parsed by `apollo-parser`, a spec-compliant GraphQL parser (the October
//!   2021 grammar: strings, block strings, unicode escapes, comments, any Unicode text), so what
//!   is counted is what a GraphQL server reads; a body that is not one JSON object with a
//!   `"query"` string (a key given twice included), a document with any syntax error, a
//!   type-system definition, no operation, or one beyond the parser limits is refused, never
//!   forwarded unchecked;
//! - refusal messages say where and what, never echo the document's text (a secret in an
//!   argument must not reach a log through them), and nothing here panics on any input.

use std::borrow::Cow;

use apollo_parser::Parser;
use apollo_parser::cst::{self, CstNode as _};
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::config::OperationType;

/// Deepest nesting the parser follows (selection sets, list and object values, list types).
/// Past it the document is refused; the bound keeps the recursive parser's stack use small
/// (well under 1 MiB even in a debug build) and is above AppSync's largest configurable query
/// depth (75).
pub const RECURSION_LIMIT: usize = 128;

/// Most lexical tokens (names, punctuation, values, whitespace runs and comments) the parser
/// reads before giving up and refusing the document: bounds CPU and memory per request.
pub const TOKEN_LIMIT: usize = 50_000;

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

/// The fields of a GraphQL-over-HTTP request body this check reads. Deserializing into a
/// struct refuses a key given twice (`duplicate field`), so no reader can take a different
/// `query` than the one checked.
#[derive(Deserialize)]
struct GraphQlRequest<'a> {
    #[serde(borrow, default)]
    query: Option<Cow<'a, str>>,
    #[serde(default, rename = "operationName")]
    _operation_name: Option<IgnoredAny>,
}

/// Refuses `body` unless every operation in its document has a type in `allowed`.
pub fn check(body: &[u8], allowed: &[OperationType]) -> Result<(), OperationError> {
    let document = request_document(body)?;
    let types = operation_types(&document).map_err(OperationError::Unreadable)?;
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

/// The `query` string of a JSON request body.
fn request_document(body: &[u8]) -> Result<Cow<'_, str>, OperationError> {
    let unreadable = |m: String| OperationError::Unreadable(m);
    // A struct also deserializes from a JSON array (`["{ a }"]`); AppSync reads an object.
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(unreadable(
            "the body must be a JSON object {\"query\": \"<document>\", …}".to_owned(),
        ));
    }
    let request: GraphQlRequest<'_> = serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        let at = format!("line {}, column {}", e.line(), e.column());
        unreadable(match e.classify() {
            Category::Io | Category::Syntax | Category::Eof => {
                format!("the body is not JSON (at {at})")
            }
            // serde's data errors can quote the offending value; keep only the safe ones.
            Category::Data if e.to_string().starts_with("duplicate field") => {
                format!("the body gives a key twice (at {at})")
            }
            Category::Data => format!("the body's \"query\" must be a string (at {at})"),
        })
    })?;
    request
        .query
        .ok_or_else(|| unreadable("the body has no \"query\" string".to_owned()))
}

/// The type of every operation definition in `doc`, in order (`{…}` shorthand is a query);
/// an error (its text never quoting the document) when the document cannot be executed as is.
pub fn operation_types(doc: &str) -> Result<Vec<OperationType>, String> {
    let tree = Parser::new(doc)
        .recursion_limit(RECURSION_LIMIT)
        .token_limit(TOKEN_LIMIT)
        .parse();
    if let Some(e) = tree.errors().next() {
        return Err(describe(doc, e, tree.errors().len()));
    }
    let mut types = Vec::new();
    for definition in tree.document().definitions() {
        match definition {
            cst::Definition::OperationDefinition(op) => types.push(operation_type(&op)),
            cst::Definition::FragmentDefinition(_) => {}
            other => {
                let (line, column) = line_column(doc, other.syntax().text_range().start().into());
                return Err(format!(
                    "a type-system definition (schema, type, directive or extension) at line \
                     {line}, column {column}: only operations and fragments can be executed"
                ));
            }
        }
    }
    if types.is_empty() {
        return Err("the document defines no operation".to_owned());
    }
    Ok(types)
}

fn operation_type(op: &cst::OperationDefinition) -> OperationType {
    match op.operation_type() {
        Some(t) if t.mutation_token().is_some() => OperationType::Mutation,
        Some(t) if t.subscription_token().is_some() => OperationType::Subscription,
        // `query …` or the `{ … }` shorthand.
        _ => OperationType::Query,
    }
}

/// A parse error as a message: where, and what, without the document's text.
fn describe(doc: &str, e: &apollo_parser::Error, count: usize) -> String {
    if e.is_limit() {
        return if e.message().contains("token") {
            format!("the document has more than {TOKEN_LIMIT} tokens (the parser's limit)")
        } else {
            format!("the document nests deeper than {RECURSION_LIMIT} levels (the parser's limit)")
        };
    }
    let (line, column) = line_column(doc, e.index());
    // Some parser messages quote the offending token ("expected X, got <token>"); a token can
    // be a whole string argument, so it is replaced.
    let data = e.data();
    let what = if data.chars().nth(1).is_some() {
        e.message().replace(data, "<token>")
    } else {
        e.message().to_owned()
    };
    let more = match count {
        0 | 1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    format!("the document is not valid GraphQL: {what} at line {line}, column {column}{more}")
}

/// 1-based line and column (in characters) of byte offset `index` in `doc`.
fn line_column(doc: &str, index: usize) -> (usize, usize) {
    let before = doc
        .char_indices()
        .take_while(|(i, _)| *i < index)
        .map(|(_, c)| c);
    let mut line = 1;
    let mut column = 1;
    for c in before {
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use OperationType::{Mutation, Query, Subscription};

    fn body(query: &str) -> String {
        serde_json::json!({ "query": query }).to_string()
    }

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

    /// Issue 16, defect 2: the hand-written lexer sliced `doc[i..]` at a byte inside a
    /// multi-byte character and panicked, the panic message quoting the document.
    #[test]
    fn non_ascii_text_anywhere_is_read_not_a_panic() {
        assert_eq!(
            operation_types("mutation { createTodo(content: \"\"\"é\"\"\") { id } }"),
            Ok(vec![Mutation])
        );
        assert_eq!(
            operation_types(
                "# 日本語のコメント { mutation\n\
                 query Cafe($n: String = \"ü } mutation {\") {\n\
                   listTodos(filter: \"\"\"naïve } \\\"\"\" { x } 🦀 \"\"\") { id }\n\
                 }\n\
                 mutation M { createTodo(content: \"\"\"🦀\"\"\", note: \"ñ\") { id } }"
            ),
            Ok(vec![Query, Mutation])
        );
        // GraphQL names are ASCII: a non-ASCII name is a syntax error, refused (not guessed).
        let refused = operation_types("query Café { a }").expect_err("not a GraphQL name");
        assert!(refused.contains("line 1, column 10"), "{refused}");
        // A byte-order mark is ignored, as the spec says.
        assert_eq!(operation_types("\u{feff}{ a }"), Ok(vec![Query]));
    }

    #[test]
    fn block_strings_with_braces_quotes_and_escaped_triple_quotes() {
        assert_eq!(
            operation_types(
                "query { a(s: \"\"\"{ } \" \"\" \\\"\"\" } mutation { b } \"\"\") }\n\
                 mutation { c(s: \"\"\"\n  }\n  {\n\"\"\") }"
            ),
            Ok(vec![Query, Mutation])
        );
        // An escaped triple quote does not end the block string: this one never ends.
        assert!(operation_types("query { a(s: \"\"\"x\\\"\"\") }").is_err());
    }

    #[test]
    fn unicode_escapes_and_escaped_quotes_stay_inside_their_string() {
        assert_eq!(
            operation_types("{ a(s: \"\\u00e9 \\\" } mutation { b } \\u007B\") }"),
            Ok(vec![Query])
        );
        assert!(
            operation_types("{ a(s: \"\\u00zz\") }").is_err(),
            "a bad escape"
        );
    }

    #[test]
    fn comments_between_any_tokens() {
        assert_eq!(
            operation_types(
                "query # } mutation {\n A # c\n ( # c\n $x # c\n : # c\n Int # c\n ) # c\n\
                 { # } mutation { b }\n a # }\n ( # c\n y # c\n : # c\n $x # c\n ) # c\n } # c\n\
                 # subscription { s }"
            ),
            Ok(vec![Query])
        );
    }

    #[test]
    fn nested_fragments_count_no_operation_of_their_own() {
        let doc = "query { ...A }\n\
                   fragment A on T { id ...B ... on T { ... on U { ...C } } }\n\
                   fragment B on T { x { ...C } }\n\
                   fragment C on T { y @include(if: true) { z } }";
        assert_eq!(operation_types(doc), Ok(vec![Query]));
        assert_eq!(
            operation_types("fragment A on T { id }"),
            Err("the document defines no operation".to_owned())
        );
    }

    #[test]
    fn anonymous_and_named_operations_together_are_all_counted() {
        let doc = "{ a } mutation M { b } query Q { c }";
        assert_eq!(operation_types(doc), Ok(vec![Query, Mutation, Query]));
        assert!(matches!(
            check(body(doc).as_bytes(), &[Query]),
            Err(OperationError::NotAllowed {
                found: "mutation",
                ..
            })
        ));
    }

    #[test]
    fn subscriptions_are_their_own_type() {
        let doc = "subscription OnCreate { onCreateTodo { id } }";
        assert_eq!(operation_types(doc), Ok(vec![Subscription]));
        assert_eq!(
            check(body(doc).as_bytes(), &[Query, Mutation]),
            Err(OperationError::NotAllowed {
                found: "subscription",
                allowed: "query, mutation".into()
            })
        );
        assert_eq!(check(body(doc).as_bytes(), &[Subscription]), Ok(()));
    }

    #[test]
    fn type_system_definitions_are_refused() {
        for doc in [
            "type T { a: Int } { a }",
            "{ a } extend type Query { b: Int }",
            "schema { query: Q } { a }",
            "directive @d on FIELD { a }",
            "\"described\" scalar S { a }",
        ] {
            let e = operation_types(doc).expect_err(doc);
            assert!(e.contains("type-system definition"), "{doc}: {e}");
        }
    }

    #[test]
    fn nesting_past_the_recursion_limit_is_refused_not_a_stack_overflow() {
        let nested = |n: usize| format!("{}{}", "{ a ".repeat(n), "}".repeat(n));
        assert_eq!(operation_types(&nested(RECURSION_LIMIT)), Ok(vec![Query]));
        let limit =
            format!("the document nests deeper than {RECURSION_LIMIT} levels (the parser's limit)");
        assert_eq!(
            operation_types(&nested(RECURSION_LIMIT + 1)),
            Err(limit.clone())
        );
        // Far past any stack: on a small thread, so an overflow would abort the test binary.
        let deep = [
            nested(200_000),
            format!(
                "{{ a(x: {}1{}) }}",
                "[".repeat(200_000),
                "]".repeat(200_000)
            ),
            format!(
                "{{ a(x: {}1{}) }}",
                "{a:".repeat(200_000),
                "}".repeat(200_000)
            ),
            format!(
                "query($v: {}T{}) {{ a }}",
                "[".repeat(200_000),
                "]".repeat(200_000)
            ),
        ];
        let results = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(move || deep.iter().map(|d| operation_types(d)).collect::<Vec<_>>())
            .expect("thread")
            .join()
            .expect("no panic");
        for r in results {
            assert!(
                r.as_ref().is_err_and(|e| e.contains("nests deeper")),
                "{r:?}"
            );
        }
    }

    #[test]
    fn documents_past_the_token_limit_are_refused_and_long_strings_are_not_tokens() {
        let fields = |n: usize| format!("{{ {} }}", "a ".repeat(n));
        // `{`, then a name and a space per field, `}`, and the end of input.
        assert_eq!(
            operation_types(&fields((TOKEN_LIMIT - 4) / 2)),
            Ok(vec![Query])
        );
        assert_eq!(
            operation_types(&fields(TOKEN_LIMIT)),
            Err(format!(
                "the document has more than {TOKEN_LIMIT} tokens (the parser's limit)"
            ))
        );
        let long = format!(
            "mutation {{ a(s: \"{}\", t: \"\"\"{}\"\"\") }}",
            "é".repeat(1 << 19),
            "}".repeat(1 << 19)
        );
        assert_eq!(operation_types(&long), Ok(vec![Mutation]));
    }

    #[test]
    fn refusals_say_where_but_never_quote_the_document() {
        for doc in [
            "query { a(x: \"s3cr3t-arg\") \"s3cr3t-stray\" }",
            "query { a(x: \"s3cr3t-unterminated",
            "query { a(x: \"\"\"s3cr3t-block",
            "query s3cr3t-name { a }",
            "query { a(x: s3cr3t) } mutation(",
            "query { a(x: 1s3cr3t) }",
        ] {
            let e = operation_types(doc).expect_err(doc);
            assert!(!e.contains("s3cr3t"), "{doc}: {e}");
            assert!(e.contains("line 1, column"), "{doc}: {e}");
            let refusal = check(body(doc).as_bytes(), &[Query]).expect_err(doc);
            assert!(!refusal.to_string().contains("s3cr3t"), "{refusal}");
        }
        assert_eq!(
            operation_types("{ a }\n\n  }").map_err(|e| e.contains("line 3, column 3")),
            Err(true)
        );
    }

    #[test]
    fn the_body_is_one_json_object_with_one_query_string() {
        let unreadable = |b: &[u8]| match check(b, &[Query, Mutation]) {
            Err(OperationError::Unreadable(m)) => m,
            other => panic!("{other:?}"),
        };
        // A second "query" (however its key is spelled) would let another reader pick the
        // other document.
        assert!(unreadable(br#"{"query":"{ a }","query":"mutation { b }"}"#).contains("key twice"));
        assert!(
            unreadable(br#"{"query":"{ a }","qu\u0065ry":"mutation { b }"}"#).contains("key twice")
        );
        assert!(
            unreadable(br#"{"query":"{ a }","operationName":"A","operationName":"B"}"#)
                .contains("key twice")
        );
        assert!(unreadable(br#"["{ a }"]"#).contains("JSON object"));
        assert!(unreadable(br#"{"query":{"s3cr3t":1}}"#).contains("must be a string"));
        assert!(!unreadable(br#"{"query":["s3cr3t"]}"#).contains("s3cr3t"));
        assert!(unreadable(br#"{"query":null}"#).contains("no \"query\""));
        assert!(unreadable(br#"{"variables":{}}"#).contains("no \"query\""));
        assert!(unreadable(br#"{"query":"{ a }""#).contains("not JSON"));
        assert!(unreadable(b"").contains("JSON object"));
        // Escapes inside the JSON string are the document's own characters.
        assert_eq!(
            check(br#"{"query":"mutation { a(s: \"\u00e9\") }"}"#, &[Query]),
            Err(OperationError::NotAllowed {
                found: "mutation",
                allowed: "query".into()
            })
        );
        assert_eq!(
            check(
                br#" {"query":"{ a }","operationName":null,"variables":{"x":[1,{"y":"z"}]},"extensions":{}}"#,
                &[Query]
            ),
            Ok(())
        );
    }
}
