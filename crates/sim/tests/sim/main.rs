//! The simulator's own tests, in one binary: its HTTP answers against the reference OpenAPI
//! schemas, its lifecycle, faults, fleets, persistence and shutdown, and the official Python
//! SDK against it, all through a plain HTTP client. batchwatch's client and daemon are held
//! against it at the top (`tests/it/`): two implementations of one contract, written apart.

mod contract;
mod faults;
mod fleet;
mod lifecycle;
mod messages;
mod persist;
mod schema;
mod sdk;
mod server;
mod skips;
#[path = "../support/mod.rs"]
mod support;
