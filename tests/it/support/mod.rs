//! Set-up shared by the integration tests.

pub mod bigfile;
pub mod client;
pub mod schema;
pub mod sim;
