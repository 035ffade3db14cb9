//! batchwatch's integration tests, in one binary so the crate links once.
//! Each module tests one part; shared set-up lives in `support`.

mod client;
mod config;
mod daemon_api_faults;
mod daemon_bad_input;
mod daemon_cancel;
mod daemon_crash;
mod daemon_lifecycle;
mod daemon_local_faults;
mod daemon_process;
mod daemon_reconcile;
mod daemon_restore;
mod daemon_sweep;
mod demo;
mod e2e_containers;
mod housekeeping;
mod metrics;
mod packaging;
mod run;
mod sim_contract;
mod sim_faults;
mod sim_fleet;
mod sim_lifecycle;
mod sim_persist;
mod sim_process;
mod sim_sdk;
mod skips;
mod status;
mod store;
mod support;
mod systemd;
