//! The encryption keys file of fleet mode (`shared.encryption_keys_file`) through its parser
//! (`credbroker::config::parse_keys`).
//!
//! Input: the file's text (bytes that are not UTF-8 replaced, as a file read into a `String`
//! could not contain them).
//!
//! The oracles: no panic; a file that parses yields a 32-byte naming key and 32-byte keys with
//! distinct valid ids in file order, each the decoding of its own line, and the same file
//! written back from them parses to the same; every refusal has one of the documented shapes, in
//! which the only text taken from the input is a line number (of a line that holds a key), a
//! decoded length and a key id that passed the id check; and none of those contains the key
//! text or the key bytes of any line read up to the refusal.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use credbroker::config::{NAMING_KEY_ID, parse_keys};
use libfuzzer_sys::fuzz_target;

const NO_NAMING: &str =
    "no \"naming\" line (it names Redis keys; `credbroker gen-key --naming` prints one)";

fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The meaningful lines: (1-based number, id, key text) or (number, whole line) without `:`.
fn lines(text: &str) -> Vec<(usize, &str, Option<&str>)> {
    text.lines()
        .enumerate()
        .map(|(n, l)| (n + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(n, l)| match l.split_once(':') {
            Some((id, key)) => (n, id, Some(key.trim())),
            None => (n, l, None),
        })
        .collect()
}

/// The input-derived parts of a refusal (its line number, a number, an id), or a panic when the
/// refusal has no documented shape.
fn variable_parts(err: &str) -> (Option<usize>, Vec<String>) {
    if err == NO_NAMING {
        return (None, Vec::new());
    }
    let rest = err
        .strip_prefix("line ")
        .unwrap_or_else(|| panic!("shape: {err:?}"));
    let (n, rest) = rest
        .split_once(": ")
        .unwrap_or_else(|| panic!("shape: {err:?}"));
    let line: usize = n.parse().unwrap_or_else(|_| panic!("line number: {err:?}"));
    let fixed = [
        "expected <key id>:<base64 key>",
        "a key id is 1 to 32 characters of A-Z a-z 0-9 _ -",
        "the key is not base64",
        "a second \"naming\" line",
    ];
    if fixed.contains(&rest) {
        return (Some(line), vec![n.to_owned()]);
    }
    if let Some(len) = rest.strip_prefix("a key is 32 bytes, this one is ") {
        assert!(
            len.parse::<usize>().is_ok_and(|l| l != 32),
            "length: {err:?}"
        );
        return (Some(line), vec![n.to_owned(), len.to_owned()]);
    }
    let id = rest
        .strip_prefix("key id \"")
        .and_then(|r| r.strip_suffix("\" appears twice"))
        .unwrap_or_else(|| panic!("shape: {err:?}"));
    assert!(valid_id(id), "an echoed id that is not a key id: {err:?}");
    (Some(line), vec![n.to_owned(), id.to_owned()])
}

fn accepted(text: &str, naming: &[u8], keys: &[(&str, &[u8])]) {
    assert_eq!(naming.len(), 32);
    let mut expected = Vec::new();
    for (_, id, key) in lines(text) {
        let key = STANDARD
            .decode(key.expect("every line has a key"))
            .expect("base64");
        if id == NAMING_KEY_ID {
            assert_eq!(key, naming, "the naming line's key");
        } else {
            expected.push((id, key));
        }
    }
    let got: Vec<(&str, Vec<u8>)> = keys.iter().map(|(i, k)| (*i, k.to_vec())).collect();
    assert_eq!(got, expected, "the keys in file order, each its line's");
    let mut ids: Vec<&str> = keys.iter().map(|(i, _)| *i).collect();
    assert!(ids.iter().all(|i| valid_id(i) && *i != NAMING_KEY_ID));
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), keys.len(), "distinct ids");
    let written: String = std::iter::once((NAMING_KEY_ID, naming))
        .chain(keys.iter().copied())
        .map(|(id, k)| format!("{id}:{}\n", STANDARD.encode(k)))
        .collect();
    let (n2, k2) = parse_keys(&written).expect("written back, it parses");
    assert_eq!(n2.expose().as_slice(), naming);
    let k2: Vec<(&str, &[u8])> = k2
        .iter()
        .map(|(i, k)| (i.as_str(), k.expose().as_slice()))
        .collect();
    assert_eq!(k2, keys, "written back, the same keys");
}

fn refused(text: &str, err: &str) {
    let (line, parts) = variable_parts(err);
    let meaningful = lines(text);
    if let Some(n) = line {
        assert!(
            meaningful.iter().any(|(m, _, _)| *m == n),
            "line {n} holds no key: {err:?}"
        );
    }
    for (n, _, key) in meaningful {
        if line.is_some_and(|l| n > l) {
            break;
        }
        let Some(key) = key.filter(|k| k.len() >= 8) else {
            continue;
        };
        let bytes = STANDARD.decode(key).unwrap_or_default();
        for part in &parts {
            assert!(!part.contains(key), "line {n}'s key text in {err:?}");
            if bytes.len() >= 8 {
                assert!(
                    !part.as_bytes().windows(bytes.len()).any(|w| w == bytes),
                    "line {n}'s key bytes in {err:?}"
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match parse_keys(&text) {
        Ok((naming, keys)) => {
            let keys: Vec<(&str, &[u8])> = keys
                .iter()
                .map(|(i, k)| (i.as_str(), k.expose().as_slice()))
                .collect();
            accepted(&text, naming.expose(), &keys);
        }
        Err(err) => refused(&text, &err),
    }
});
