//! The `poll` Lambda: the API routes that read (`GET` and `HEAD` under `/v1`, admin reads
//! included) and API Gateway's default route, so a path we do not serve gets our JSON 404. It
//! serves the same axum router as the local runner; result URLs are signed fresh on every poll.
//!
//! Build with `make build-lambda`; try with `make invoke FN=poll EVENT=events/poll.json`.

use lambda_http::{run, tracing, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();

    let aws = imagegen::aws::app_from_env()
        .await
        .inspect_err(|e| tracing::error!(error = %e, "cold start failed"))?;
    let router = imagegen::http::router(aws.app, aws.admin_token.as_ref());

    run(router).await
}
