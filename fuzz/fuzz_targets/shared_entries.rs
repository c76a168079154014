//! Fleet mode's values read back from Redis (see `credbroker_fuzz::shared`).
#![no_main]

use std::sync::LazyLock;

use credbroker_fuzz::shared::SharedWorld;
use libfuzzer_sys::fuzz_target;

static WORLD: LazyLock<SharedWorld> = LazyLock::new(SharedWorld::new);

fuzz_target!(|data: &[u8]| WORLD.run(data));
