//! Secret store adapters: a SQLite table (embedded) and, with the `aws` feature, Secrets Manager.

#[cfg(feature = "aws")]
pub mod aws;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};
use secrecy::{ExposeSecret, SecretString};

use crate::ports::{PortResult, SecretStore};
use crate::store::sqlite::{internal, SqliteDb};

/// Secrets kept in the embedded database file. The file is the local runner's own; on AWS the
/// secrets live in Secrets Manager instead.
#[derive(Clone)]
pub struct SqliteSecrets {
    db: SqliteDb,
}

impl SqliteSecrets {
    pub fn new(db: SqliteDb) -> Self {
        Self { db }
    }
}

#[async_trait]
impl SecretStore for SqliteSecrets {
    async fn get(&self, name: &str) -> PortResult<Option<SecretString>> {
        let name = name.to_owned();
        self.db
            .call(move |conn| {
                let value: Option<String> = conn
                    .query_row(
                        "SELECT value FROM secrets WHERE name = ?1",
                        params![name],
                        |row| row.get(0),
                    )
                    .optional()
                    .map_err(internal)?;
                Ok(value.map(SecretString::from))
            })
            .await
    }

    async fn put(&self, name: &str, value: &SecretString) -> PortResult<()> {
        let name = name.to_owned();
        let value = value.expose_secret().to_owned();
        self.db
            .call(move |conn| {
                conn.execute(
                    "INSERT INTO secrets (name, value) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET value = ?2",
                    params![name, value],
                )
                .map_err(internal)?;
                Ok(())
            })
            .await
    }
}
