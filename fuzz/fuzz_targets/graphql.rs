//! The AppSync `allowed_operations` check (`credbroker::appsync::operations`).
//!
//! Input: one byte, then the rest. Bits 0–2 of the byte choose the allowed operation types
//! (query, mutation, subscription; none set means query only). Bit 3 set: the rest is a GraphQL
//! document, wrapped by the harness as `{"query": <document>}`; clear: the rest is the request
//! body as sent.
//!
//! The oracles: no panic; the verdict agrees with the operation types the check reports; and a
//! second, independent parser (`graphql-parser`) that also reads the document must find the
//! same operation types in the same order — a document two parsers read differently is a way
//! around `allowed_operations`.
#![no_main]

use credbroker::appsync::operations::{OperationError, check, operation_types};
use credbroker::config::OperationType;
use libfuzzer_sys::fuzz_target;

fn other_parser(doc: &str) -> Option<Vec<OperationType>> {
    use graphql_parser::query::{Definition, OperationDefinition};
    let parsed = graphql_parser::query::parse_query::<&str>(doc).ok()?;
    Some(
        parsed
            .definitions
            .iter()
            .filter_map(|d| match d {
                Definition::Operation(OperationDefinition::SelectionSet(_))
                | Definition::Operation(OperationDefinition::Query(_)) => {
                    Some(OperationType::Query)
                }
                Definition::Operation(OperationDefinition::Mutation(_)) => {
                    Some(OperationType::Mutation)
                }
                Definition::Operation(OperationDefinition::Subscription(_)) => {
                    Some(OperationType::Subscription)
                }
                Definition::Fragment(_) => None,
            })
            .collect(),
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut allowed = Vec::new();
    for (bit, t) in [
        (1, OperationType::Query),
        (2, OperationType::Mutation),
        (4, OperationType::Subscription),
    ] {
        if flags & bit != 0 {
            allowed.push(t);
        }
    }
    if allowed.is_empty() {
        allowed.push(OperationType::Query);
    }
    if flags & 8 == 0 {
        let _ = check(rest, &allowed);
        return;
    }
    let doc = String::from_utf8_lossy(rest);
    let body = serde_json::json!({ "query": doc }).to_string();
    let verdict = check(body.as_bytes(), &allowed);
    let ours = operation_types(&doc);
    match (&verdict, &ours) {
        (Ok(()), Ok(types)) => assert!(types.iter().all(|t| allowed.contains(t))),
        (Err(OperationError::NotAllowed { found, .. }), Ok(types)) => {
            assert!(
                types
                    .iter()
                    .any(|t| t.as_str() == *found && !allowed.contains(t))
            )
        }
        (Err(OperationError::Unreadable(_)), Err(_)) => {}
        (v, o) => panic!("verdict {v:?} disagrees with the operation types {o:?}"),
    }
    if let (Ok(types), Some(theirs)) = (&ours, other_parser(&doc)) {
        assert_eq!(types, &theirs, "graphql-parser reads other operations");
    }
});
