//! The embedded job store: one SQLite file holds jobs, idempotency records, tenants, usage and
//! job events. Every multi-row write is one transaction, so a crash leaves nothing half-written.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::domain::{Job, JobId, JobStatus, Tenant, TenantId, UsageDay};
use crate::ports::{
    CreateOutcome, IdempotencyClaim, JobEvent, JobPage, JobStore, PortError, PortResult,
    WriteOutcome,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    status TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant_id, id);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, updated_ms);
CREATE TABLE IF NOT EXISTS idempotency (
    tenant_id TEXT NOT NULL,
    key TEXT NOT NULL,
    job_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    tenant_id TEXT NOT NULL,
    day TEXT NOT NULL,
    units INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, day)
);
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    from_status TEXT,
    to_status TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (job_id, version)
);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    sent_ms INTEGER NOT NULL,
    visible_ms INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    dead INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, dead, visible_ms);
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// One SQLite connection shared by the embedded store, queue and secret adapters.
///
/// Calls run on tokio's blocking pool; the mutex serialises them, which SQLite would do for
/// writers anyway.
#[derive(Clone)]
pub struct SqliteDb {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteDb {
    /// Open (or create) the database file and its schema.
    ///
    /// # Errors
    /// [`PortError::Internal`] when the file cannot be opened or the schema cannot be made.
    pub fn open(path: &Path) -> PortResult<Self> {
        let conn = Connection::open(path).map_err(internal)?;
        Self::init(conn)
    }

    /// A private in-memory database, for tests.
    ///
    /// # Errors
    /// [`PortError::Internal`] when the schema cannot be made.
    pub fn in_memory() -> PortResult<Self> {
        Self::init(Connection::open_in_memory().map_err(internal)?)
    }

    fn init(conn: Connection) -> PortResult<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(internal)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(internal)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(internal)?;
        conn.execute_batch(SCHEMA).map_err(internal)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Run `f` with the connection on the blocking pool.
    pub(crate) async fn call<T, F>(&self, f: F) -> PortResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> PortResult<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| PortError::Internal("sqlite connection poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| PortError::Internal(format!("sqlite task failed: {e}")))?
    }
}

pub(crate) fn internal(e: impl std::fmt::Display) -> PortError {
    PortError::Internal(e.to_string())
}

pub(crate) fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn decode_job(body: &str) -> PortResult<Job> {
    serde_json::from_str(body).map_err(|e| PortError::Internal(format!("bad job row: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> PortResult<String> {
    serde_json::to_string(value).map_err(internal)
}

/// The SQLite [`JobStore`].
#[derive(Clone)]
pub struct SqliteStore {
    db: SqliteDb,
}

impl SqliteStore {
    pub fn new(db: SqliteDb) -> Self {
        Self { db }
    }
}

fn insert_event(
    tx: &rusqlite::Transaction<'_>,
    job: &Job,
    from: Option<JobStatus>,
) -> PortResult<()> {
    tx.execute(
        "INSERT OR IGNORE INTO job_events (job_id, version, from_status, to_status, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            job.id.as_str(),
            job.version as i64,
            from.map(JobStatus::as_str),
            job.status.as_str(),
            millis(job.updated_at)
        ],
    )
    .map_err(internal)?;
    Ok(())
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn create_job(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyClaim>,
        daily_cap: u32,
    ) -> PortResult<CreateOutcome> {
        let job = job.clone();
        let claim = idempotency.cloned();
        self.db
            .call(move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(internal)?;
                let tenant = job.tenant_id.as_str();
                let now_ms = millis(job.created_at);

                if let Some(claim) = &claim {
                    let existing: Option<(String, String)> = tx
                        .query_row(
                            "SELECT job_id, request_hash FROM idempotency
                             WHERE tenant_id = ?1 AND key = ?2 AND expires_ms > ?3",
                            params![tenant, claim.key.as_str(), now_ms],
                            |row| Ok((row.get(0)?, row.get(1)?)),
                        )
                        .optional()
                        .map_err(internal)?;
                    if let Some((job_id, request_hash)) = existing {
                        let job_id = JobId::parse(&job_id)
                            .ok_or_else(|| internal("bad job id in idempotency row"))?;
                        // The row names the job; its creation time is in the job itself, read
                        // in the same transaction (a local read, unlike DynamoDB's call).
                        let body: String = tx
                            .query_row(
                                "SELECT body FROM jobs WHERE id = ?1",
                                params![job_id.as_str()],
                                |row| row.get(0),
                            )
                            .optional()
                            .map_err(internal)?
                            .ok_or_else(|| internal("idempotency row names a missing job"))?;
                        return Ok(CreateOutcome::Duplicate {
                            job_id,
                            request_hash,
                            status: JobStatus::Queued,
                            created_at: decode_job(&body)?.created_at,
                        });
                    }
                }

                let day = job.usage_day.to_string();
                let used: i64 = tx
                    .query_row(
                        "SELECT units FROM usage WHERE tenant_id = ?1 AND day = ?2",
                        params![tenant, day],
                        |row| row.get(0),
                    )
                    .optional()
                    .map_err(internal)?
                    .unwrap_or(0);
                if used >= i64::from(daily_cap) {
                    return Ok(CreateOutcome::DailyCapReached);
                }

                tx.execute(
                    "INSERT INTO usage (tenant_id, day, units) VALUES (?1, ?2, 1)
                     ON CONFLICT (tenant_id, day) DO UPDATE SET units = units + 1",
                    params![tenant, day],
                )
                .map_err(internal)?;
                tx.execute(
                    "INSERT INTO jobs (id, tenant_id, status, version, updated_ms, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        job.id.as_str(),
                        tenant,
                        job.status.as_str(),
                        job.version as i64,
                        millis(job.updated_at),
                        encode(&job)?
                    ],
                )
                .map_err(internal)?;
                if let Some(claim) = &claim {
                    tx.execute(
                        "INSERT OR REPLACE INTO idempotency
                         (tenant_id, key, job_id, request_hash, expires_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![
                            tenant,
                            claim.key.as_str(),
                            job.id.as_str(),
                            claim.request_hash,
                            millis(claim.expires_at)
                        ],
                    )
                    .map_err(internal)?;
                }
                insert_event(&tx, &job, None)?;
                tx.commit().map_err(internal)?;
                Ok(CreateOutcome::Created)
            })
            .await
    }

    async fn get_job(&self, id: &JobId) -> PortResult<Option<Job>> {
        let id = id.clone();
        self.db
            .call(move |conn| {
                let body: Option<String> = conn
                    .query_row(
                        "SELECT body FROM jobs WHERE id = ?1",
                        params![id.as_str()],
                        |row| row.get(0),
                    )
                    .optional()
                    .map_err(internal)?;
                body.as_deref().map(decode_job).transpose()
            })
            .await
    }

    async fn update_job(&self, previous: &Job, next: &Job) -> PortResult<WriteOutcome> {
        let previous = previous.clone();
        let next = next.clone();
        self.db
            .call(move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(internal)?;
                let changed = tx
                    .execute(
                        "UPDATE jobs SET status = ?1, version = ?2, updated_ms = ?3, body = ?4
                         WHERE id = ?5 AND version = ?6 AND status = ?7",
                        params![
                            next.status.as_str(),
                            next.version as i64,
                            millis(next.updated_at),
                            encode(&next)?,
                            next.id.as_str(),
                            previous.version as i64,
                            previous.status.as_str()
                        ],
                    )
                    .map_err(internal)?;
                if changed == 0 {
                    let current: Option<String> = tx
                        .query_row(
                            "SELECT body FROM jobs WHERE id = ?1",
                            params![next.id.as_str()],
                            |row| row.get(0),
                        )
                        .optional()
                        .map_err(internal)?;
                    return match current {
                        Some(body) => Ok(WriteOutcome::Conflict(Box::new(decode_job(&body)?))),
                        None => Ok(WriteOutcome::Missing),
                    };
                }

                if next.refunds_from(&previous) {
                    tx.execute(
                        "UPDATE usage SET units = MAX(units - 1, 0)
                         WHERE tenant_id = ?1 AND day = ?2",
                        params![next.tenant_id.as_str(), next.usage_day.to_string()],
                    )
                    .map_err(internal)?;
                }
                // A takeover (RUNNING again, one more attempt) is a transition too.
                if next.status != previous.status || next.attempts != previous.attempts {
                    insert_event(&tx, &next, Some(previous.status))?;
                }
                tx.commit().map_err(internal)?;
                Ok(WriteOutcome::Written)
            })
            .await
    }

    async fn list_jobs(
        &self,
        tenant: &TenantId,
        status: Option<JobStatus>,
        limit: u32,
        after: Option<&JobId>,
    ) -> PortResult<JobPage> {
        let tenant = tenant.clone();
        let after = after.cloned();
        self.db
            .call(move |conn| {
                // Like a DynamoDB query on the tenant index: read `limit` rows of the index,
                // then filter by status, so a page can be short or empty yet have a successor.
                let mut stmt = conn
                    .prepare(
                        "SELECT id, status, body FROM jobs
                         WHERE tenant_id = ?1 AND (?2 IS NULL OR id < ?2)
                         ORDER BY id DESC LIMIT ?3",
                    )
                    .map_err(internal)?;
                let rows = stmt
                    .query_map(
                        params![tenant.as_str(), after.as_ref().map(JobId::as_str), limit],
                        |row| {
                            Ok((
                                row.get::<_, String>(0)?,
                                row.get::<_, String>(1)?,
                                row.get::<_, String>(2)?,
                            ))
                        },
                    )
                    .map_err(internal)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(internal)?;

                let full = rows.len() as u32 == limit;
                let last_evaluated = if full {
                    rows.last().and_then(|(id, _, _)| JobId::parse(id))
                } else {
                    None
                };
                let jobs = rows
                    .iter()
                    .filter(|(_, s, _)| status.is_none_or(|want| want.as_str() == s))
                    .map(|(_, _, body)| decode_job(body))
                    .collect::<PortResult<Vec<_>>>()?;
                Ok(JobPage {
                    jobs,
                    last_evaluated,
                })
            })
            .await
    }

    async fn stale_jobs(
        &self,
        status: JobStatus,
        before: DateTime<Utc>,
        limit: u32,
    ) -> PortResult<Vec<Job>> {
        self.db
            .call(move |conn| {
                let mut stmt = conn
                    .prepare(
                        "SELECT body FROM jobs WHERE status = ?1 AND updated_ms <= ?2
                         ORDER BY updated_ms LIMIT ?3",
                    )
                    .map_err(internal)?;
                let bodies = stmt
                    .query_map(params![status.as_str(), millis(before), limit], |row| {
                        row.get::<_, String>(0)
                    })
                    .map_err(internal)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(internal)?;
                bodies.iter().map(|b| decode_job(b)).collect()
            })
            .await
    }

    async fn job_events(&self, id: &JobId) -> PortResult<Vec<JobEvent>> {
        let id = id.clone();
        self.db
            .call(move |conn| {
                let mut stmt = conn
                    .prepare(
                        "SELECT version, from_status, to_status, at_ms FROM job_events
                         WHERE job_id = ?1 ORDER BY version",
                    )
                    .map_err(internal)?;
                let rows = stmt
                    .query_map(params![id.as_str()], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, Option<String>>(1)?,
                            row.get::<_, String>(2)?,
                            row.get::<_, i64>(3)?,
                        ))
                    })
                    .map_err(internal)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(internal)?;
                rows.into_iter()
                    .map(|(version, from, to, at)| {
                        Ok(JobEvent {
                            job_id: id.clone(),
                            version: version as u64,
                            from: from.as_deref().and_then(JobStatus::parse),
                            to: JobStatus::parse(&to)
                                .ok_or_else(|| internal("bad status in job event"))?,
                            at: from_millis(at),
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn put_tenant(&self, tenant: &Tenant) -> PortResult<()> {
        let tenant = tenant.clone();
        self.db
            .call(move |conn| {
                conn.execute(
                    "INSERT INTO tenants (id, key_hash, body) VALUES (?1, ?2, ?3)
                     ON CONFLICT (id) DO UPDATE SET key_hash = ?2, body = ?3",
                    params![tenant.id.as_str(), tenant.key_hash, encode(&tenant)?],
                )
                .map_err(internal)?;
                Ok(())
            })
            .await
    }

    async fn get_tenant(&self, id: &TenantId) -> PortResult<Option<Tenant>> {
        let id = id.clone();
        self.db
            .call(move |conn| {
                let body: Option<String> = conn
                    .query_row(
                        "SELECT body FROM tenants WHERE id = ?1",
                        params![id.as_str()],
                        |row| row.get(0),
                    )
                    .optional()
                    .map_err(internal)?;
                body.map(|b| serde_json::from_str(&b).map_err(internal))
                    .transpose()
            })
            .await
    }

    async fn tenant_by_key_hash(&self, key_hash: &str) -> PortResult<Option<Tenant>> {
        let key_hash = key_hash.to_owned();
        self.db
            .call(move |conn| {
                let body: Option<String> = conn
                    .query_row(
                        "SELECT body FROM tenants WHERE key_hash = ?1",
                        params![key_hash],
                        |row| row.get(0),
                    )
                    .optional()
                    .map_err(internal)?;
                body.map(|b| serde_json::from_str(&b).map_err(internal))
                    .transpose()
            })
            .await
    }

    async fn usage(&self, tenant: &TenantId, day: UsageDay) -> PortResult<u64> {
        let tenant = tenant.clone();
        self.db
            .call(move |conn| {
                let units: Option<i64> = conn
                    .query_row(
                        "SELECT units FROM usage WHERE tenant_id = ?1 AND day = ?2",
                        params![tenant.as_str(), day.to_string()],
                        |row| row.get(0),
                    )
                    .optional()
                    .map_err(internal)?;
                Ok(units.unwrap_or(0).max(0) as u64)
            })
            .await
    }
}
