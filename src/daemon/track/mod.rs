//! Following a batch to its end: retrieving it ([`poll`]) or listing the service's batches
//! once for all of them ([`sweep`]), recording what is seen ([`observe`]), and jobs that stopped
//! moving ([`stuck`]).

pub mod observe;
pub mod poll;
pub mod stuck;
pub mod sweep;
