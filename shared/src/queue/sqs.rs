//! The SQS queue. On Lambda only [`Queue::send`] is used: the event source mapping receives,
//! deletes and redrives. [`QueueConsumer`] is here for runners that poll SQS themselves and for
//! the behavioural suite.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use aws_sdk_sqs::Client;
use chrono::{DateTime, Utc};

use crate::aws::{ceil_seconds, sdk_error};
use crate::ports::{
    PortError, PortResult, Queue, QueueConsumer, QueueName, ReceivedMessage, MAX_QUEUE_DELAY,
};

/// The queues' URLs. A dead-letter queue's URL, when not given, is found through its queue's
/// redrive policy (two more calls and two more IAM rights).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueUrls {
    pub generate: String,
    pub webhook: String,
    pub generate_dead_letter: Option<String>,
    pub webhook_dead_letter: Option<String>,
}

/// The SQS [`Queue`] and [`QueueConsumer`].
#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: Client,
    urls: QueueUrls,
}

impl SqsQueue {
    pub fn new(client: Client, urls: QueueUrls) -> Self {
        Self { client, urls }
    }

    fn url(&self, queue: QueueName) -> &str {
        match queue {
            QueueName::Generate => &self.urls.generate,
            QueueName::Webhook => &self.urls.webhook,
        }
    }

    /// The dead-letter queue's URL: the configured one, else read from the redrive policy.
    async fn dead_letter_url(&self, queue: QueueName) -> PortResult<Option<String>> {
        let configured = match queue {
            QueueName::Generate => &self.urls.generate_dead_letter,
            QueueName::Webhook => &self.urls.webhook_dead_letter,
        };
        if let Some(url) = configured {
            return Ok(Some(url.clone()));
        }

        let attributes = self
            .client
            .get_queue_attributes()
            .queue_url(self.url(queue))
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(sdk_error)?;
        let Some(policy) = attributes
            .attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::RedrivePolicy))
        else {
            return Ok(None);
        };
        let policy: serde_json::Value = serde_json::from_str(&policy)
            .map_err(|e| PortError::Internal(format!("bad redrive policy: {e}")))?;
        let Some(name) = policy["deadLetterTargetArn"]
            .as_str()
            .and_then(|arn| arn.rsplit(':').next())
        else {
            return Ok(None);
        };
        let url = self
            .client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(url.queue_url)
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, queue: QueueName, body: &str, delay: Duration) -> PortResult<()> {
        // SQS counts delays in whole seconds; rounding up never delivers before the wait ends.
        let delay = ceil_seconds(delay.min(MAX_QUEUE_DELAY)).min(MAX_QUEUE_DELAY.as_secs());
        self.client
            .send_message()
            .queue_url(self.url(queue))
            .message_body(body)
            .delay_seconds(delay as i32)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    async fn send_to_dead_letter(&self, queue: QueueName, body: &str) -> PortResult<()> {
        // Without a configured URL this costs two lookups; it runs only for events that
        // exhausted their retries.
        let url = self.dead_letter_url(queue).await?.ok_or_else(|| {
            PortError::Internal(format!("queue {} has no dead-letter queue", queue.as_str()))
        })?;
        self.client
            .send_message()
            .queue_url(url)
            .message_body(body)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }
}

fn sent_at(
    attributes: Option<&std::collections::HashMap<MessageSystemAttributeName, String>>,
) -> DateTime<Utc> {
    attributes
        .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
        .and_then(|ms| ms.parse::<i64>().ok())
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or_default()
}

#[async_trait]
impl QueueConsumer for SqsQueue {
    async fn receive(
        &self,
        queue: QueueName,
        max: u32,
        visibility: Duration,
    ) -> PortResult<Vec<ReceivedMessage>> {
        let output = self
            .client
            .receive_message()
            .queue_url(self.url(queue))
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .visibility_timeout(ceil_seconds(visibility) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(sdk_error)?;

        let mut received = Vec::new();
        for message in output.messages.unwrap_or_default() {
            let attributes = message.attributes.as_ref();
            let receive_count = attributes
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            let sent_at = sent_at(attributes);
            let (Some(message_id), Some(receipt_handle)) =
                (message.message_id, message.receipt_handle)
            else {
                continue;
            };
            received.push(ReceivedMessage {
                message_id,
                receipt_handle,
                body: message.body.unwrap_or_default(),
                receive_count,
                sent_at,
            });
        }
        Ok(received)
    }

    async fn delete(&self, queue: QueueName, receipt_handle: &str) -> PortResult<()> {
        self.client
            .delete_message()
            .queue_url(self.url(queue))
            .receipt_handle(receipt_handle)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    async fn dead_letters(&self, queue: QueueName) -> PortResult<Vec<String>> {
        let Some(url) = self.dead_letter_url(queue).await? else {
            return Ok(Vec::new());
        };

        // Peek: a zero visibility timeout leaves every message where it is. Receives sample
        // the queue, so read until a few in a row bring nothing new.
        let mut seen = HashSet::new();
        let mut bodies = Vec::new();
        let mut idle = 0;
        while idle < 3 {
            let output = self
                .client
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .visibility_timeout(0)
                .send()
                .await
                .map_err(sdk_error)?;
            let mut fresh = false;
            for message in output.messages.unwrap_or_default() {
                if let Some(id) = message.message_id {
                    if seen.insert(id) {
                        fresh = true;
                        bodies.push(message.body.unwrap_or_default());
                    }
                }
            }
            idle = if fresh { 0 } else { idle + 1 };
        }
        Ok(bodies)
    }
}
