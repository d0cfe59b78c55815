//! The shared vocabulary of Strata: the developer manifest (`strata.toml`) and its locked
//! form, invocation records, log lines and the stable error codes of the HTTP edge.
//!
//! This crate does no I/O beyond parsing text it is given; every other crate may depend on
//! it, and it depends on no other Strata crate.
#![forbid(unsafe_code)]

pub mod cgi;
mod error_code;
pub mod hosts;
mod manifest;
mod record;
pub mod units;

pub use error_code::ErrorCode;
pub use hosts::{AllowedHosts, BadHost};
pub use manifest::{Build, ExecMode, FunctionSpec, Manifest, ManifestError, Network, Runtime, Trigger, valid_topic};
pub use record::{ArtifactOrigin, ColdPath, ColdStart, InvocationRecord, LogLine, LogStream, SandboxSteps};
