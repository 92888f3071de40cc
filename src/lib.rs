//! Portcullis: a caching pull-through OCI registry proxy.
//!
//! Layout:
//! - [`config`]: `proxy.toml`, typed and validated.
//! - [`http`]: the registry API surface; parses routes and maps errors, nothing more.
//! - [`cache`]: the pull-through logic: local store first, else one shared upstream fetch.
//! - [`attachments`]: cosign signatures, attestations, SBOMs and OCI referrers next to images.
//! - [`upstream`]: the client of upstream registries (auth, retries, timeouts).
//! - [`store`]: content-addressed storage of verified bytes, behind a trait.
//! - [`manifest`], [`names`]: manifest media types and validated names, digests, references.
//! - [`auth`]: who may read and write (htpasswd users, per-scope rules); [`tls`]: HTTPS.
//! - [`push`]: blob uploads and manifest pushes.
//! - [`registry`]: manifest pulls, pushes and deletes as clients ask for them, through the policies.
//! - [`policy`]: WebAssembly policy modules: loading (files, or signed artifacts from a registry),
//!   sandboxed evaluation, decisions, audit, and the authoring tools (new, test, bench, push).
//! - [`verify`]: native verification of cosign signatures and attestations.
//! - [`error`]: the one error type and its OCI error codes.
//! - [`metrics`]: one registry of counters and histograms, handed to the services.
//! - [`request_id`]: each request's id, carried by the work done for it.
//! - [`logging`]: log lines to standard error, written in batches by busy worker threads.
//! - [`clients`]: the client files (registries.conf, policy.json, hosts.toml, daemon.json).
//! - [`server`]: serving the API on a listener with graceful shutdown.

// the request future (a task-local scope around an instrumented answer) nests deeply
#![recursion_limit = "256"]

pub mod attachments;
pub mod auth;
pub mod cache;
pub mod clients;
pub mod config;
pub mod error;
pub mod http;
pub mod logging;
pub mod manifest;
pub mod metrics;
pub mod names;
pub mod policy;
pub mod push;
pub mod registry;
pub mod request_id;
pub mod server;
pub mod store;
pub mod tls;
pub mod upstream;
pub mod verify;
