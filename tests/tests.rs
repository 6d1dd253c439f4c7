//! Integration tests: the real binary, the real worker process, real files.

mod common;
mod jobs;
mod process;
mod sandbox;
mod service;
mod storage;
mod sufficiency;
mod sweeper;
