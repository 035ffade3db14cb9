//! What the running process does besides the work: checking the API key and the service's
//! routes ([`key`]), reloading its configuration on SIGHUP ([`reload`]), telling the service
//! manager how it is ([`notify`]), holding the instance lock ([`instance`]) and the lease on
//! a shared store ([`lease`]).

pub mod instance;
pub mod key;
pub mod lease;
pub mod notify;
pub mod reload;
