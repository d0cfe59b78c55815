//! The Encapsule layer: one function instance, a language runtime inside a process sandbox
//! that loads the handler once and serves many calls over the instance protocol.
//!
//! [`Instance::launch`] starts the sandbox with the runtime's bootstrap (Python, Node), the
//! user's executable, or the per-call stdio adapter, waits for `ready`, and records the cold
//! start's breakdown. [`Instance::invoke`] sends one call and waits for its answer within the
//! function's timeout; a timeout kills the instance. Output is attributed to calls and handed
//! to a log sink. Python instances are forked from a function template (the handler imported
//! once) or a runtime template ([`Templates`]) when one is running, with the same isolation
//! as a sandbox started from scratch. This crate decides nothing about how many instances
//! exist: that is the orchestrator's.

pub mod deps;
mod instance;
pub mod protocol;
mod templates;

pub use instance::{DeathReason, Instance, InvokeError, LaunchError, LaunchSpec, LogSink, Request, Response, Runtimes};
pub use templates::{FUNCTION_TEMPLATE_IDLE, FunctionTemplate, FunctionTemplates, Templates};
