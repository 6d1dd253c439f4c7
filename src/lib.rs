//! Airlock: the safe door through which untrusted CSV uploads enter a data pipeline.
//!
//! This crate is the service around the engine: the CLI, policies, the worker entry point and
//! the parent side of `process`, object storage, and the download server. It never parses CSV;
//! only the worker does, through `airlock-engine`, after `airlock-sandbox` has locked it down.

#![forbid(unsafe_code)]

pub mod api;
pub mod api_schemas;
pub mod api_webhooks;
pub mod audit;
pub mod build_info;
pub mod cli;
pub mod config;
pub mod doctor;
#[cfg(feature = "test-seam")]
pub mod hostile;
pub mod hotcache;
pub mod jobs;
pub mod liveness;
pub mod metrics;
pub mod policy;
pub mod process;
pub mod ratelimit;
pub mod schema;
pub mod schemas;
pub mod serve;
pub mod service;
pub mod storage;
pub mod supervisor;
pub mod sweeper;
pub mod tenants;
pub mod webhooks;
pub mod workdir;
pub mod worker;
