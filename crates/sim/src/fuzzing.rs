//! The simulator's HTTP application without a listener, for the fuzz targets in `fuzz/`: a
//! request goes straight to the router. Built only with the `fuzzing` feature.

use std::sync::Arc;

use axum::Extension;
use axum::extract::ConnectInfo;

use crate::conn::ConnKill;
use crate::model::SimConfig;
use crate::routes;
use crate::state::Shared;

/// A fresh simulator's application (its own temporary data directory, no lifecycle ticker):
/// the routes, the key check and the request parsing of [`crate::start`], without a socket.
pub fn app(config: &SimConfig) -> anyhow::Result<axum::Router> {
    config.validate()?;
    let app = routes::router(Arc::new(Shared::new(config)?));
    // Fault injection may sever the connection; here there is none to sever.
    Ok(app.layer(Extension(ConnectInfo(ConnKill::detached()))))
}
