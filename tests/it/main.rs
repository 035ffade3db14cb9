//! batchwatch's integration tests, in one binary so the crate links once.
//! Each module tests one part; shared set-up lives in `support`.

mod support;

mod client;
mod sim_contract;
mod sim_lifecycle;
