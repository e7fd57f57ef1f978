//! The `submit` Lambda: the API routes that change state (every method but `GET` and `HEAD`
//! under `/v1`: submit, cancel, uploads, webhook and admin changes), behind API Gateway's HTTP
//! API. It serves the same axum router as the local runner.
//!
//! Build with `make build-lambda`; try with `make invoke FN=submit EVENT=events/submit.json`.

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
