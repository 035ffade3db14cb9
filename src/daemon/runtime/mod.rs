//! What the running process does besides the work: reloading its configuration on SIGHUP
//! ([`reload`]), telling the service manager how it is ([`notify`]), and holding the instance
//! lock ([`instance`]).

pub mod instance;
pub mod notify;
pub mod reload;
