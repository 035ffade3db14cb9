//! batchwatch's integration tests, in one binary so the crate links once.
//! Each module tests one part; shared set-up lives in `support`.

mod support;

mod client;
mod sim_contract;
mod sim_faults;
mod sim_lifecycle;
mod sim_process;
mod sim_sdk;
