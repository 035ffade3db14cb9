//! The HTTP surface: the API under `/v1` and, for Azure-style clients, `/openai/v1`, each
//! behind the key check and fault injection, with Anthropic's Message Batches beside OpenAI's
//! under `/v1`; the admin API beside them, untouched by faults.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::OriginalUri;
use axum::http::{Method, StatusCode};
use axum::middleware;
use axum::routing::{get, post};

use crate::messages::{self, MAX_BODY_BYTES};

use crate::error::ApiError;
use crate::files::MAX_UPLOAD_BYTES;
use crate::state::Shared;
use crate::{admin, batches, faults, files};

/// The API routes, relative to one API root.
fn api(shared: &Arc<Shared>) -> Router<Arc<Shared>> {
    // Multipart overhead on top of the largest file accepted.
    let upload_limit = DefaultBodyLimit::max(MAX_UPLOAD_BYTES + 1024 * 1024);
    Router::new()
        .route(
            "/files",
            post(files::create).layer(upload_limit).get(files::list),
        )
        .route(
            "/files/{file_id}",
            get(files::retrieve).delete(files::delete),
        )
        .route("/files/{file_id}/content", get(files::content))
        .route("/batches", post(batches::create).get(batches::list))
        .route("/batches/{batch_id}", get(batches::retrieve))
        .route("/batches/{batch_id}/cancel", post(batches::cancel))
        .method_not_allowed_fallback(wrong_method)
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            faults::middleware,
        ))
}

/// Anthropic's Message Batches routes, relative to `/v1`, in Anthropic's error shape.
fn message_batches(shared: &Arc<Shared>) -> Router<Arc<Shared>> {
    let create_limit = DefaultBodyLimit::max(MAX_BODY_BYTES);
    Router::new()
        .route(
            "/messages/batches",
            post(messages::create)
                .layer(create_limit)
                .get(messages::list),
        )
        .route(
            "/messages/batches/{batch_id}",
            get(messages::retrieve).delete(messages::delete),
        )
        .route(
            "/messages/batches/{batch_id}/cancel",
            post(messages::cancel),
        )
        .route(
            "/messages/batches/{batch_id}/results",
            get(messages::results),
        )
        .method_not_allowed_fallback(wrong_method)
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            faults::middleware,
        ))
        .route_layer(middleware::from_fn(messages::anthropic_shape))
}

/// The whole application.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .nest("/v1", api(&shared).merge(message_batches(&shared)))
        .nest("/openai/v1", api(&shared))
        .merge(admin::router())
        .fallback(unknown_route)
        .with_state(shared)
}

async fn unknown_route(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::not_found(format!("Invalid URL ({method} {})", uri.path()))
}

async fn wrong_method(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("Invalid method for URL ({method} {})", uri.path()),
    )
}
