//! Pre-initialisation at deploy (Wizer): a core module (`wasm32-wasip1` command) that exports
//! `wizer-initialize` has it run once, here, and its memories and globals snapshotted into a
//! new module, so every fresh instance per request starts from the initialised state instead
//! of redoing the set-up. `wasmtime-wizer` does the instrumenting and rewriting; this module
//! runs the initialiser in our engine (the crate's own runner would turn on wasmtime
//! features the tier does not use, garbage collection and threads among them).
//!
//! The initialiser may not call imports: every import is linked to a trap, as Wizer itself
//! does, because the snapshot can only hold the module's own state, not a host's (an open
//! file, a clock read). It runs in an engine of its own (not the tier's instance pool, which
//! serves calls), under the function's memory limit and a deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::{Config, Engine, Linker, Module, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wizer::{InstanceState, SnapshotVal, Wizer};

use crate::WasmError;

/// The export that marks a module for pre-initialisation (Wizer's default name).
pub const INIT_EXPORT: &str = "wizer-initialize";

/// How long an initialiser may run at deploy.
pub const INIT_LIMIT: Duration = Duration::from_secs(30);

/// The deadline's resolution.
const TICK: Duration = Duration::from_millis(10);

/// Whether `wasm` is a core module exporting [`INIT_EXPORT`] as a function.
pub fn wants_preinit(wasm: &[u8]) -> bool {
    if !wasm.starts_with(b"\0asm") || wasm.get(4..8) != Some(&[1, 0, 0, 0]) {
        return false;
    }
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let Ok(wasmparser::Payload::ExportSection(reader)) = payload {
            return reader
                .into_iter()
                .flatten()
                .any(|e| e.name == INIT_EXPORT && e.kind == wasmparser::ExternalKind::Func);
        }
    }
    false
}

struct Snapshotter<'a> {
    store: &'a mut Store<StoreLimits>,
    instance: wasmtime::Instance,
}

impl InstanceState for Snapshotter<'_> {
    async fn global_get(&mut self, name: &str, _type_hint: wasmtime_wizer::ValType) -> SnapshotVal {
        let global = self
            .instance
            .get_global(&mut *self.store, name)
            .expect("wizer asks only for the globals it exported");
        match global.get(&mut *self.store) {
            wasmtime::Val::I32(x) => SnapshotVal::I32(x),
            wasmtime::Val::I64(x) => SnapshotVal::I64(x),
            wasmtime::Val::F32(x) => SnapshotVal::F32(x),
            wasmtime::Val::F64(x) => SnapshotVal::F64(x),
            wasmtime::Val::V128(x) => SnapshotVal::V128(x.as_u128()),
            other => panic!("global {name} holds {other:?}, which wizer does not snapshot"),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        let memory = self
            .instance
            .get_memory(&mut *self.store, name)
            .expect("wizer asks only for the memories it exported");
        contents(memory.data(&*self.store));
    }
}

/// Drive a future that never waits on anything outside itself (every await in the snapshot
/// is on work done in place) to completion; one that does is a bug, reported, not spun on.
fn finish<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for _ in 0..1_000_000 {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return Some(v);
        }
    }
    None
}

/// Run the module's initialiser, with at most `memory_bytes` of linear memory and for at most
/// `limit`, and return the pre-initialised module.
pub fn preinitialize(wasm: &[u8], memory_bytes: u64, limit: Duration) -> Result<Vec<u8>, WasmError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| WasmError::Invalid(format!("pre-initialisation: {what}: {e}"));
    let mut wizer = Wizer::new();
    wizer.init_func(INIT_EXPORT);
    let (cx, instrumented) = wizer
        .instrument(wasm)
        .map_err(|e| fail("instrument", &format!("{e:#}")))?;
    let mut config = Config::new();
    config.epoch_interruption(true);
    let engine = Engine::new(&config).map_err(|e| fail("engine", &format!("{e:#}")))?;
    let module = Module::new(&engine, &instrumented).map_err(|e| fail("compile", &format!("{e:#}")))?;
    let mut linker = Linker::<StoreLimits>::new(&engine);
    linker
        .define_unknown_imports_as_traps(&module)
        .map_err(|e| fail("link", &format!("{e:#}")))?;
    let limits = StoreLimitsBuilder::new()
        .memory_size(usize::try_from(memory_bytes).unwrap_or(usize::MAX))
        .build();
    let mut store = Store::new(&engine, limits);
    store.limiter(|l| l);
    store.set_epoch_deadline((limit.as_nanos() / TICK.as_nanos()).max(1) as u64);
    store.epoch_deadline_trap();
    // The deadline's clock, for this initialiser only.
    let done = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (done, engine) = (Arc::clone(&done), engine.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                engine.increment_epoch();
            }
        })
    };
    let ran = (|| {
        let instance = linker
            .instantiate(&mut store, &module)
            .map_err(|e| fail("instantiate", &format!("{e:#}")))?;
        let init = instance
            .get_typed_func::<(), ()>(&mut store, INIT_EXPORT)
            .map_err(|e| fail(INIT_EXPORT, &format!("{e:#}")))?;
        init.call(&mut store, ()).map_err(|e| {
            fail(
                &format!(
                    "{INIT_EXPORT} failed (it may not call imports such as WASI, has {limit:?} and \
                     the function's {memory_bytes} bytes of memory)"
                ),
                &format!("{e:#}"),
            )
        })?;
        Ok(instance)
    })();
    done.store(true, Ordering::Relaxed);
    let _ = ticker.join();
    let instance = ran?;
    let mut state = Snapshotter {
        store: &mut store,
        instance,
    };
    finish(wizer.snapshot(&cx, &mut state))
        .ok_or_else(|| fail("snapshot", &"did not complete"))?
        .map_err(|e| fail("snapshot", &format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_core_modules_exporting_the_initialiser_want_it() {
        // (module (func (export "wizer-initialize")))
        let with = [
            0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x01, 0x60, 0x00, 0x00, 0x03, 0x02, 0x01, 0x00,
            0x07, 0x14, 0x01, 0x10, b'w', b'i', b'z', b'e', b'r', b'-', b'i', b'n', b'i', b't', b'i', b'a', b'l', b'i',
            b'z', b'e', 0x00, 0x00, 0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b,
        ];
        assert!(wants_preinit(&with));
        let mut other = with;
        other[22] = b'W';
        assert!(!wants_preinit(&other), "another export name");
        assert!(!wants_preinit(b"\0asm\x0d\0\x01\0"), "a component");
        assert!(!wants_preinit(b"not wasm"));
    }
}
