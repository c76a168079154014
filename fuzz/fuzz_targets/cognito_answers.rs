//! Cognito's answers through the SDK client and credbroker's classification (see
//! `credbroker_fuzz::cognito`).
#![no_main]

use std::sync::LazyLock;

use credbroker_fuzz::cognito::CognitoWorld;
use libfuzzer_sys::fuzz_target;

static WORLD: LazyLock<CognitoWorld> = LazyLock::new(CognitoWorld::new);

fuzz_target!(|data: &[u8]| WORLD.run(data));
