//! HTTP requests through the container, sessions, AppSync and IMDS routers (see
//! `credbroker_fuzz::routes`).
#![no_main]

use std::sync::LazyLock;

use credbroker_fuzz::routes::RoutesWorld;
use libfuzzer_sys::fuzz_target;

static WORLD: LazyLock<RoutesWorld> = LazyLock::new(RoutesWorld::new);

fuzz_target!(|data: &[u8]| WORLD.run(data));
