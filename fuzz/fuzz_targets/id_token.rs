//! ID tokens through the validator (see `credbroker_fuzz::tokens`).
#![no_main]

use std::sync::LazyLock;

use credbroker_fuzz::tokens::TokenWorld;
use libfuzzer_sys::fuzz_target;

static WORLD: LazyLock<TokenWorld> = LazyLock::new(TokenWorld::new);

fuzz_target!(|data: &[u8]| WORLD.run(data));
