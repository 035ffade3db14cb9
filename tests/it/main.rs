//! batchwatch's integration tests, in one binary so the crate links once.
//! Each module tests one part; shared set-up lives in `support`.

mod architecture;
mod browser;
mod client;
mod config;
mod daemon_api_faults;
mod daemon_bad_input;
mod daemon_cancel;
mod daemon_crash;
mod daemon_intake;
mod daemon_lifecycle;
mod daemon_local_faults;
mod daemon_process;
mod daemon_reconcile;
mod daemon_restore;
mod daemon_sweep;
mod daemon_upgrade;
mod demo;
mod doctor;
mod e2e_containers;
mod fleet;
mod fleet_containers;
mod housekeeping;
mod metrics;
mod metrics_limits;
mod packaging;
mod pages;
mod postgres;
mod run;
mod sim_process;
mod skips;
mod status;
mod store;
mod store_model;
mod support;
mod systemd;
