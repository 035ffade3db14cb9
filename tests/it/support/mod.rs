//! Set-up shared by the integration tests.

pub mod schema;
pub mod sim;
