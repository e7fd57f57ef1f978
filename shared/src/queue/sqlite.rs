//! The embedded queue: rows in the shared SQLite file with SQS's semantics — per-message delay,
//! a visibility timeout on receive, a receive count, and a dead-letter queue after a maximum.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use rusqlite::params;

use crate::ports::{PortResult, Queue, QueueConsumer, QueueName, ReceivedMessage, MAX_QUEUE_DELAY};
use crate::store::sqlite::{internal, millis, SqliteDb};

/// The SQLite [`Queue`] and [`QueueConsumer`].
#[derive(Clone)]
pub struct SqliteQueue {
    db: SqliteDb,
    max_receives: u32,
}

impl SqliteQueue {
    /// A queue whose messages go to the dead-letter queue on their `max_receives + 1`th receive.
    pub fn new(db: SqliteDb, max_receives: u32) -> Self {
        Self { db, max_receives }
    }
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn send(&self, queue: QueueName, body: &str, delay: Duration) -> PortResult<()> {
        let body = body.to_owned();
        let now = Utc::now();
        let delay = delay.min(MAX_QUEUE_DELAY);
        let visible = millis(now) + delay.as_millis() as i64;
        self.db
            .call(move |conn| {
                conn.execute(
                    "INSERT INTO messages (id, queue, body, sent_ms, visible_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        ulid::Ulid::new().to_string(),
                        queue.as_str(),
                        body,
                        millis(now),
                        visible
                    ],
                )
                .map_err(internal)?;
                Ok(())
            })
            .await
    }

    async fn send_to_dead_letter(&self, queue: QueueName, body: &str) -> PortResult<()> {
        let body = body.to_owned();
        let now = millis(Utc::now());
        self.db
            .call(move |conn| {
                conn.execute(
                    "INSERT INTO messages (id, queue, body, sent_ms, visible_ms, dead)
                     VALUES (?1, ?2, ?3, ?4, ?4, 1)",
                    params![ulid::Ulid::new().to_string(), queue.as_str(), body, now],
                )
                .map_err(internal)?;
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl QueueConsumer for SqliteQueue {
    async fn receive(
        &self,
        queue: QueueName,
        max: u32,
        visibility: Duration,
    ) -> PortResult<Vec<ReceivedMessage>> {
        let max_receives = self.max_receives;
        self.db
            .call(move |conn| {
                let now = millis(Utc::now());
                let tx = conn.transaction().map_err(internal)?;
                let candidates = {
                    let mut stmt = tx
                        .prepare(
                            "SELECT id, body, receive_count, sent_ms FROM messages
                             WHERE queue = ?1 AND dead = 0 AND visible_ms <= ?2
                             ORDER BY visible_ms LIMIT ?3",
                        )
                        .map_err(internal)?;
                    let rows = stmt
                        .query_map(params![queue.as_str(), now, max], |row| {
                            Ok((
                                row.get::<_, String>(0)?,
                                row.get::<_, String>(1)?,
                                row.get::<_, u32>(2)?,
                                row.get::<_, i64>(3)?,
                            ))
                        })
                        .map_err(internal)?;
                    rows.collect::<Result<Vec<_>, _>>().map_err(internal)?
                };

                let mut received = Vec::new();
                for (id, body, count, sent_ms) in candidates {
                    if count >= max_receives {
                        tx.execute("UPDATE messages SET dead = 1 WHERE id = ?1", params![id])
                            .map_err(internal)?;
                        continue;
                    }
                    let receipt = format!("{id}:{}", ulid::Ulid::new());
                    let visible = now + visibility.as_millis() as i64;
                    tx.execute(
                        "UPDATE messages SET receive_count = receive_count + 1,
                         visible_ms = ?1, receipt = ?2 WHERE id = ?3",
                        params![visible, receipt, id],
                    )
                    .map_err(internal)?;
                    received.push(ReceivedMessage {
                        message_id: id,
                        receipt_handle: receipt,
                        body,
                        receive_count: count + 1,
                        sent_at: chrono::DateTime::from_timestamp_millis(sent_ms)
                            .unwrap_or_default(),
                    });
                }
                tx.commit().map_err(internal)?;
                Ok(received)
            })
            .await
    }

    async fn delete(&self, queue: QueueName, receipt_handle: &str) -> PortResult<()> {
        let receipt = receipt_handle.to_owned();
        self.db
            .call(move |conn| {
                // Like SQS, only the latest receipt deletes: a stale one is ignored.
                conn.execute(
                    "DELETE FROM messages WHERE queue = ?1 AND receipt = ?2",
                    params![queue.as_str(), receipt],
                )
                .map_err(internal)?;
                Ok(())
            })
            .await
    }

    async fn dead_letters(&self, queue: QueueName) -> PortResult<Vec<String>> {
        self.db
            .call(move |conn| {
                let mut stmt = conn
                    .prepare(
                        "SELECT body FROM messages WHERE queue = ?1 AND dead = 1 ORDER BY sent_ms",
                    )
                    .map_err(internal)?;
                let bodies = stmt
                    .query_map(params![queue.as_str()], |row| row.get::<_, String>(0))
                    .map_err(internal)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(internal)?;
                Ok(bodies)
            })
            .await
    }
}
