//! The `reconcile` Lambda: runs on a schedule and re-queues jobs that no message will move any
//! more (a queue send that failed after the job was written, a message lost with a worker).
//!
//! Build with `make build-lambda`; try with `make invoke FN=reconcile EVENT=events/reconcile.json`.

use std::time::Duration;

use lambda_runtime::{run, service_fn, tracing, Error, LambdaEvent};
use serde_json::{json, Value};

/// Jobs idle for longer than this are re-queued; a repeated message is harmless.
const IDLE: Duration = Duration::from_secs(120);
/// Jobs looked at per state and run.
const BATCH: u32 = 200;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();

    let aws = imagegen::aws::app_from_env()
        .await
        .inspect_err(|e| tracing::error!(error = %e, "cold start failed"))?;
    let app = &aws.app;

    run(service_fn(|_event: LambdaEvent<Value>| async move {
        let requeued = imagegen::service::reconcile::reconcile(app, IDLE, BATCH).await?;
        Ok::<Value, Error>(json!({ "requeued": requeued }))
    }))
    .await
}
