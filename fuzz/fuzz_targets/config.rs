//! Configuration text through the loader and validator (`credbroker::config::load`).
//!
//! Input: TOML text, then optionally a NUL byte and `NAME=value` lines taken as the process
//! environment (the loader reads `CREDBROKER_<SECTION>__<KEY>` from it).
//! The oracle: no panic; a configuration that loads keeps its listeners on loopback unless
//! `allow_non_loopback` says otherwise, and every refusal names at least one problem.
#![no_main]

use credbroker::config::{Sources, load};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |b| *b == 0);
    let toml = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let env = parts
        .next()
        .map(|e| {
            String::from_utf8_lossy(e)
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let sources = Sources {
        toml: Some(toml),
        env,
        ..Sources::default()
    };
    match load(&sources) {
        Ok(config) => {
            let s = &config.server;
            assert!(
                s.allow_non_loopback || s.listen.ip().is_loopback(),
                "{:?}",
                s.listen
            );
            if let Some(imds) = &config.imds {
                assert!(imds.allow_non_loopback || imds.listen.ip().is_loopback());
            }
            if let Some(listen) = config.grpc.listen {
                assert!(config.grpc.allow_non_loopback || listen.ip().is_loopback());
            }
        }
        Err(e) => assert!(!e.0.is_empty(), "a refusal without a problem"),
    }
});
