//! End-to-end tests: the real `strata` binary as daemon and CLI, real sandboxes (root).
//! One test binary, one module per area (wasmtime's layout).

mod harness;

mod asynchronous;
mod deps;
mod errors;
mod invoke;
mod lifecycle;
mod wasm;
