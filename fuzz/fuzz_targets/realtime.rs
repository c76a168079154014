//! What AppSync real-time clients send: encoded headers and client frames, and the rewrite of a
//! start towards AppSync (see `credbroker_fuzz::realtime`).
#![no_main]

use std::sync::LazyLock;

use credbroker_fuzz::realtime::RealtimeWorld;
use libfuzzer_sys::fuzz_target;

static WORLD: LazyLock<RealtimeWorld> = LazyLock::new(RealtimeWorld::new);

fuzz_target!(|data: &[u8]| WORLD.run(data));
