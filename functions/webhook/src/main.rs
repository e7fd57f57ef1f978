//! The `webhook` Lambda: takes batches from the webhook queue, signs and sends each event, and
//! answers with a partial batch response so only failed deliveries come back.
//!
//! Build with `make build-lambda`; try with `make invoke FN=webhook EVENT=events/webhook.json`.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{run, service_fn, tracing, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();

    let aws = imagegen::aws::app_from_env()
        .await
        .inspect_err(|e| tracing::error!(error = %e, "cold start failed"))?;
    let app = &aws.app;

    run(service_fn(|event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, Error>(imagegen::handlers::webhook_batch(app, event.payload).await)
    }))
    .await
}
