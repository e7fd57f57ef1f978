//! `imagegen-bench`: figures for the limiter, each against its own `redis-server` on a free
//! loopback port (never the shared one).
//!
//! Run everything with `make bench` (release build), or one part with
//! `cargo run --release -p imagegen-bench -- throughput|overadmission|crash|goodput|memory`.
//! `--seconds N` sets how long the timed parts run (default 10).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use imagegen::domain::{
    KeyState, Limits, QuotaGroup, QuotaGroupId, TenantId, UpstreamKey, UpstreamKeyId,
};
use imagegen::limiter::redis_server::LocalRedisServer;
use imagegen::limiter::{
    KeyPool, LimiterSettings, LocalLimiter, RedisLimiter, RedisSettings, SqliteKeyRegistry,
};
use imagegen::ports::{
    Admission, KeyOutcome, KeyRegistry, Limiter, Permit, PermitRequest, SecretStore,
};
use imagegen::secrets::SqliteSecrets;
use imagegen::store::SqliteDb;
use rand::Rng;
use redis::aio::ConnectionManager;

type BenchResult<T> = Result<T, String>;

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

/// A registry holding `groups` quota groups with `keys_per_group` keys each.
async fn pool(
    db: SqliteDb,
    groups: u32,
    keys_per_group: u32,
    group_limits: Limits,
    key_limits: Limits,
) -> BenchResult<Arc<KeyPool>> {
    let registry = Arc::new(
        SqliteKeyRegistry::new(db.clone())
            .await
            .map_err(err("registry"))?,
    );
    for g in 0..groups {
        let group = QuotaGroup {
            id: QuotaGroupId::parse(&format!("project-{g}")).map_err(err("group id"))?,
            limits: group_limits,
            updated_at: Utc::now(),
        };
        registry.put_group(&group).await.map_err(err("group"))?;
        for k in 0..keys_per_group {
            let key = UpstreamKey {
                id: UpstreamKeyId::parse(&format!("key-{g}-{k}")).map_err(err("key id"))?,
                group: group.id.clone(),
                limits: key_limits,
                state: KeyState::Enabled,
                disabled_reason: None,
                label: None,
                created_at: Utc::now(),
                updated_at: Utc::now(),
            };
            registry.put_key(&key).await.map_err(err("key"))?;
        }
    }
    let secrets: Arc<dyn SecretStore> = Arc::new(SqliteSecrets::new(db));
    Ok(Arc::new(KeyPool::new(
        registry,
        secrets,
        Duration::from_secs(3600),
    )))
}

async fn redis_limiter(
    server: &LocalRedisServer,
    settings: LimiterSettings,
    pool: Arc<KeyPool>,
) -> BenchResult<RedisLimiter> {
    RedisLimiter::connect(settings, RedisSettings::new(server.url().into()), pool)
        .await
        .map_err(err("connect"))
}

fn request(tenant: u32, lease: Duration) -> PermitRequest {
    PermitRequest {
        tenant_id: TenantId::new(format!("ten_{tenant}")),
        tenant_concurrency: 1_000,
        tenant_rpm: None,
        needs_key: true,
        lease,
    }
}

fn env_number(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn micros(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// The seed design's limiter: a fixed-window counter and an INCR/DECR concurrency counter per
/// layer, one layer at a time, each command its own round trip.
struct SeedLimiter {
    connection: ConnectionManager,
}

impl SeedLimiter {
    async fn acquire(&self, layers: &[String], rpm: i64, concurrency: i64) -> BenchResult<bool> {
        let mut c = self.connection.clone();
        let minute = Utc::now().timestamp() / 60;
        let mut taken: Vec<&String> = Vec::new();
        for layer in layers {
            let window_key = format!("seed:r:{layer}:{minute}");
            let count: i64 = redis::cmd("INCR")
                .arg(&window_key)
                .query_async(&mut c)
                .await
                .map_err(err("incr"))?;
            let _: i64 = redis::cmd("EXPIRE")
                .arg(&window_key)
                .arg(60)
                .query_async(&mut c)
                .await
                .map_err(err("expire"))?;
            let held: i64 = redis::cmd("INCR")
                .arg(format!("seed:c:{layer}"))
                .query_async(&mut c)
                .await
                .map_err(err("incr"))?;
            if count > rpm || held > concurrency {
                let _: i64 = redis::cmd("DECR")
                    .arg(format!("seed:c:{layer}"))
                    .query_async(&mut c)
                    .await
                    .map_err(err("decr"))?;
                for layer in taken {
                    let _: i64 = redis::cmd("DECR")
                        .arg(format!("seed:c:{layer}"))
                        .query_async(&mut c)
                        .await
                        .map_err(err("decr"))?;
                }
                return Ok(false);
            }
            taken.push(layer);
        }
        Ok(true)
    }

    async fn release(&self, layers: &[String]) -> BenchResult<()> {
        let mut c = self.connection.clone();
        for layer in layers {
            let _: i64 = redis::cmd("DECR")
                .arg(format!("seed:c:{layer}"))
                .query_async(&mut c)
                .await
                .map_err(err("decr"))?;
        }
        Ok(())
    }
}

/// What redis-server did since the last reset: microseconds spent executing commands, and
/// how many top-level calls it took to do it.
struct ServerWork {
    busy_us: u64,
    calls: u64,
}

async fn server_work(connection: &mut ConnectionManager) -> BenchResult<ServerWork> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(connection)
        .await
        .map_err(err("info"))?;
    if std::env::var("BENCH_DEBUG").is_ok() {
        eprintln!("{info}");
    }
    // Commands run inside a script are counted in the script's own time as well.
    let scripted = info.contains("cmdstat_evalsha");
    let stat = |line: &str, name: &str| -> u64 {
        line.split(&format!("{name}="))
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let lines: Vec<&str> = info
        .lines()
        .filter(|line| line.starts_with("cmdstat_"))
        .filter(|line| !line.starts_with("cmdstat_info") && !line.starts_with("cmdstat_config"))
        .filter(|line| !scripted || line.starts_with("cmdstat_evalsha"))
        .collect();
    Ok(ServerWork {
        busy_us: lines.iter().map(|l| stat(l, "usec")).sum(),
        calls: lines.iter().map(|l| stat(l, "calls")).sum(),
    })
}

async fn reset_stats(connection: &mut ConnectionManager) -> BenchResult<()> {
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(connection)
        .await
        .map_err(err("resetstat"))
}

struct PairFigures {
    pairs: u64,
    seconds: f64,
    pair_us: Vec<u64>,
    acquire_us: Vec<u64>,
}

impl PairFigures {
    fn print(&mut self, name: &str, round_trips: &str, server: ServerWork) {
        self.pair_us.sort_unstable();
        self.acquire_us.sort_unstable();
        let pairs = self.pairs.max(1) as f64;
        let per_pair = server.busy_us as f64 / pairs;
        println!(
            "  {name:<34} {:>7.0} pairs/s  pair p50 {}  p99 {}  acquire p99 {}  ({round_trips}); \
             {:.2} server calls per pair; redis busy {per_pair:.1} us per pair, so one redis \
             core tops out at {:.0} pairs/s",
            self.pairs as f64 / self.seconds,
            micros(percentile(&self.pair_us, 0.50)),
            micros(percentile(&self.pair_us, 0.99)),
            micros(percentile(&self.acquire_us, 0.99)),
            server.calls as f64 / pairs,
            1e6 / per_pair.max(0.001),
        );
    }
}

const CALLERS: u32 = 64;

/// Run `work` from [`CALLERS`] callers for `seconds`: back to back (a closed loop, which
/// finds the most pairs per second), or each caller at its share of `pace` pairs per second
/// (an open loop, which shows the latency at that load).
async fn run_pairs<F, Fut>(seconds: u64, pace: Option<f64>, work: F) -> BenchResult<PairFigures>
where
    F: Fn(u32) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = BenchResult<(Duration, Duration)>> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let work = work.clone();
        tasks.push(tokio::spawn(async move {
            let mut pair_us = Vec::new();
            let mut acquire_us = Vec::new();
            let interval = pace.map(|rate| Duration::from_secs_f64(f64::from(CALLERS) / rate));
            // Callers start spread over one interval, not all at once.
            let mut next = started
                + interval.map_or(Duration::ZERO, |i| {
                    i.mul_f64(f64::from(caller) / f64::from(CALLERS))
                });
            while Instant::now() < deadline {
                if let Some(interval) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += interval;
                }
                let (acquire, pair) = work(caller).await?;
                acquire_us.push(acquire.as_micros() as u64);
                pair_us.push(pair.as_micros() as u64);
            }
            Ok::<_, String>((pair_us, acquire_us))
        }));
    }
    let mut figures = PairFigures {
        pairs: 0,
        seconds: 0.0,
        pair_us: Vec::new(),
        acquire_us: Vec::new(),
    };
    for task in tasks {
        let (pairs, acquires) = task.await.map_err(err("caller"))??;
        figures.pairs += pairs.len() as u64;
        figures.pair_us.extend(pairs);
        figures.acquire_us.extend(acquires);
    }
    figures.seconds = started.elapsed().as_secs_f64();
    Ok(figures)
}

async fn throughput(seconds: u64) -> BenchResult<()> {
    println!("throughput: {CALLERS} concurrent callers, acquire+release pairs, {seconds} s each");
    let server = LocalRedisServer::start(&[])?;
    let roomy = Limits {
        requests_per_minute: None,
        concurrency: Some(1_000),
    };
    let groups = env_number("BENCH_PROJECTS", 2);
    let keys = env_number("BENCH_KEYS_PER_PROJECT", 2);
    println!("  pool: {groups} projects x {keys} keys; 8 tenants");
    let pool = pool(
        SqliteDb::in_memory().map_err(err("db"))?,
        groups,
        keys,
        roomy,
        roomy,
    )
    .await?;
    let limiter = Arc::new(redis_limiter(&server, LimiterSettings::default(), pool).await?);

    let mut stats = limiter.connection();
    reset_stats(&mut stats).await?;
    let ours = Arc::clone(&limiter);
    let ours_paced = Arc::clone(&ours);
    let mut figures = run_pairs(seconds, None, move |caller| {
        let limiter = Arc::clone(&ours);
        async move { pair(&limiter, caller).await }
    })
    .await?;
    let busy = server_work(&mut stats).await?;
    figures.print(
        "one script call each way (this)",
        "2 round trips per pair",
        busy,
    );
    reset_stats(&mut stats).await?;

    let seed = Arc::new(SeedLimiter {
        connection: limiter.connection(),
    });
    let mut figures = run_pairs(seconds, None, move |caller| {
        let seed = Arc::clone(&seed);
        async move {
            let layers = vec![
                "global".to_owned(),
                format!("tenant:{}", caller % 8),
                format!("group:{}", caller % 4),
                format!("key:{}", caller % 16),
            ];
            let started = Instant::now();
            let granted = seed.acquire(&layers, i64::MAX, 1_000).await?;
            let acquired = started.elapsed();
            if granted {
                seed.release(&layers).await?;
            }
            Ok((acquired, started.elapsed()))
        }
    })
    .await?;
    let busy = server_work(&mut stats).await?;
    figures.print(
        "seed: separate calls per layer",
        "16 round trips per pair",
        busy,
    );

    // Latency below saturation: the same callers, each paced to its share of a fixed rate.
    let rates = std::env::var("BENCH_PACED").unwrap_or_else(|_| "5000,10000,15000".into());
    for rate in rates
        .split(',')
        .filter_map(|r| r.trim().parse::<f64>().ok())
    {
        reset_stats(&mut stats).await?;
        let limiter = Arc::clone(&ours_paced);
        let mut figures = run_pairs(seconds.min(5), Some(rate), move |caller| {
            let limiter = Arc::clone(&limiter);
            async move { pair(&limiter, caller).await }
        })
        .await?;
        let busy = server_work(&mut stats).await?;
        figures.print(
            &format!("this, paced at {rate:.0} pairs/s"),
            "open loop",
            busy,
        );
    }
    Ok(())
}

/// One acquire and its release on this limiter: (acquire time, pair time).
async fn pair(limiter: &RedisLimiter, caller: u32) -> BenchResult<(Duration, Duration)> {
    let started = Instant::now();
    let admission = limiter
        .acquire(&request(caller % 8, Duration::from_secs(60)))
        .await
        .map_err(err("acquire"))?;
    let acquired = started.elapsed();
    if let Admission::Granted(permit) = admission {
        limiter
            .release(&permit, KeyOutcome::Success)
            .await
            .map_err(err("release"))?;
    }
    Ok((acquired, started.elapsed()))
}

/// The most admissions inside any closed window of `window_ms`, given sorted times in ms.
fn most_in_window(times: &[i64], window_ms: i64) -> usize {
    let mut most = 0;
    let mut start = 0;
    for (end, at) in times.iter().enumerate() {
        while times[start] < at - window_ms {
            start += 1;
        }
        most = most.max(end + 1 - start);
    }
    most
}

async fn race(limiter: Arc<dyn Limiter>, seconds: u64, window: Duration) -> (Vec<i64>, u32, u64) {
    let callers = 200;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let held = Arc::new(AtomicU32::new(0));
    let most_held = Arc::new(AtomicU32::new(0));
    let denials = Arc::new(AtomicU64::new(0));
    let times = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let (limiter, held, most_held, denials, times) = (
            Arc::clone(&limiter),
            Arc::clone(&held),
            Arc::clone(&most_held),
            Arc::clone(&denials),
            Arc::clone(&times),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match limiter.acquire(&request(caller % 10, window * 4)).await {
                    Ok(Admission::Granted(permit)) => {
                        let now_held = held.fetch_add(1, Ordering::SeqCst) + 1;
                        most_held.fetch_max(now_held, Ordering::SeqCst);
                        // The lease id starts with the limiter's own admission time.
                        if let Some(at) = permit
                            .lease_id
                            .split('-')
                            .next()
                            .and_then(|s| s.parse().ok())
                        {
                            if let Ok(mut times) = times.lock() {
                                times.push(at);
                            }
                        }
                        let hold = rand::thread_rng().gen_range(0..40);
                        tokio::time::sleep(Duration::from_millis(hold)).await;
                        held.fetch_sub(1, Ordering::SeqCst);
                        let _ = limiter.release(&permit, KeyOutcome::Success).await;
                    }
                    Ok(Admission::Denied { retry_after }) => {
                        denials.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(retry_after).await;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let mut times = times.lock().map(|t| t.clone()).unwrap_or_default();
    times.sort_unstable();
    (
        times,
        most_held.load(Ordering::SeqCst),
        denials.load(Ordering::Relaxed),
    )
}

async fn overadmission(seconds: u64) -> BenchResult<()> {
    let window = Duration::from_secs(2);
    let rpm = 100;
    let concurrency = 10;
    println!(
        "over-admission: 200 racing callers for {seconds} s; one project limited to {rpm} per \
         {} s window (scaled minute) and {concurrency} at once; 3 keys of 5 at once each",
        window.as_secs()
    );
    let settings = LimiterSettings {
        window,
        busy_retry: Duration::from_millis(5),
        ..LimiterSettings::default()
    };
    let group = Limits {
        requests_per_minute: Some(rpm),
        concurrency: Some(concurrency),
    };
    let key = Limits {
        requests_per_minute: None,
        concurrency: Some(5),
    };
    let server = LocalRedisServer::start(&[])?;
    let redis_pool = pool(SqliteDb::in_memory().map_err(err("db"))?, 1, 3, group, key).await?;
    let local_pool = pool(SqliteDb::in_memory().map_err(err("db"))?, 1, 3, group, key).await?;
    let adapters: Vec<(&str, Arc<dyn Limiter>)> = vec![
        (
            "redis",
            Arc::new(redis_limiter(&server, settings.clone(), redis_pool).await?),
        ),
        (
            "embedded",
            Arc::new(LocalLimiter::new(settings, local_pool)),
        ),
    ];
    for (name, limiter) in adapters {
        let (times, most_held, denials) = race(limiter, seconds, window).await;
        let most = most_in_window(&times, window.as_millis() as i64);
        println!(
            "  {name:<9} admissions {:>5}  most in any window {most:>4} (limit {rpm}, over {})  \
             most held at once {most_held:>3} (limit {concurrency}, over {})  denials {denials}",
            times.len(),
            most.saturating_sub(rpm as usize),
            most_held.saturating_sub(concurrency),
        );
    }
    Ok(())
}

/// Child process for the crash figure: take leases and wait to be killed.
async fn crash_holder(db_path: &str, url: &str) -> BenchResult<()> {
    let db = SqliteDb::open(Path::new(db_path)).map_err(err("db"))?;
    let pool = Arc::new(KeyPool::new(
        Arc::new(
            SqliteKeyRegistry::new(db.clone())
                .await
                .map_err(err("registry"))?,
        ),
        Arc::new(SqliteSecrets::new(db)),
        Duration::from_secs(3600),
    ));
    let limiter = RedisLimiter::connect(
        crash_settings(),
        RedisSettings::new(url.to_owned().into()),
        pool,
    )
    .await
    .map_err(err("connect"))?;
    let mut held = 0;
    while held < 10 {
        if let Admission::Granted(_) = limiter
            .acquire(&request(0, CRASH_LEASE))
            .await
            .map_err(err("acquire"))?
        {
            held += 1;
        }
    }
    println!("held");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(())
}

const CRASH_LEASE: Duration = Duration::from_secs(3);

fn crash_settings() -> LimiterSettings {
    LimiterSettings {
        busy_retry: Duration::from_millis(10),
        ..LimiterSettings::default()
    }
}

async fn crash() -> BenchResult<()> {
    println!(
        "crash: 2 holder processes take all 20 leases of a project and are killed (SIGKILL); \
         lease TTL {} s",
        CRASH_LEASE.as_secs()
    );
    let dir = std::env::temp_dir().join(format!("imagegen-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(err("temp dir"))?;
    let db_path = dir.join("keys.sqlite");
    let db = SqliteDb::open(&db_path).map_err(err("db"))?;
    let group = Limits {
        requests_per_minute: None,
        concurrency: Some(20),
    };
    let pool = pool(db, 1, 2, group, Limits::default()).await?;
    let server = LocalRedisServer::start(&[])?;
    let limiter = redis_limiter(&server, crash_settings(), pool).await?;

    let me = std::env::current_exe().map_err(err("own path"))?;
    let mut children = Vec::new();
    for _ in 0..2 {
        let mut child = Command::new(&me)
            .args(["crash-holder", &db_path.to_string_lossy(), &server.url()])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(err("spawn holder"))?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            use std::io::BufRead;
            std::io::BufReader::new(out)
                .read_line(&mut line)
                .map_err(err("holder"))?;
        }
        children.push(child);
    }
    let full = matches!(
        limiter
            .acquire(&request(1, CRASH_LEASE))
            .await
            .map_err(err("acquire"))?,
        Admission::Denied { .. }
    );
    let killed = Instant::now();
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }

    let mut permits: Vec<Permit> = Vec::new();
    while permits.len() < 20 && killed.elapsed() < Duration::from_secs(30) {
        match limiter
            .acquire(&request(1, CRASH_LEASE))
            .await
            .map_err(err("acquire"))?
        {
            Admission::Granted(permit) => permits.push(permit),
            Admission::Denied { retry_after } => {
                tokio::time::sleep(retry_after.min(Duration::from_millis(10))).await
            }
        }
    }
    let recovered = killed.elapsed();
    for permit in &permits {
        limiter
            .release(permit, KeyOutcome::Success)
            .await
            .map_err(err("release"))?;
    }

    let mut connection = limiter.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut connection)
        .await
        .map_err(err("keys"))?;
    let mut without_ttl = 0;
    for key in &keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut connection)
            .await
            .map_err(err("pttl"))?;
        if ttl < 0 {
            without_ttl += 1;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if std::env::var("BENCH_DEBUG").is_ok() {
        eprintln!("{keys:?}");
    }
    println!(
        "  pool full before the kill: {full}; all 20 leases back {:.2} s after the kill \
         (bound: lease TTL + 1 s = {} s); keys {}, without a TTL {without_ttl}",
        recovered.as_secs_f64(),
        CRASH_LEASE.as_secs() + 1,
        keys.len()
    );
    Ok(())
}

/// An upstream that enforces per-project requests per window and concurrency, answering 429
/// when either is exceeded, with seconds of latency (scaled down).
struct FakeUpstream {
    window: Duration,
    rpm: usize,
    concurrency: u32,
    projects: Mutex<HashMap<String, (VecDeque<Instant>, u32)>>,
    throttled: AtomicU64,
    served: AtomicU64,
}

impl FakeUpstream {
    async fn call(&self, project: &str, latency: Duration) -> Result<(), Duration> {
        {
            let mut projects = self.projects.lock().map_err(|_| Duration::ZERO)?;
            let (log, in_flight) = projects.entry(project.to_owned()).or_default();
            let now = Instant::now();
            while log
                .front()
                .is_some_and(|t| now.duration_since(*t) >= self.window)
            {
                log.pop_front();
            }
            if log.len() >= self.rpm || *in_flight >= self.concurrency {
                self.throttled.fetch_add(1, Ordering::Relaxed);
                let wait = log.front().map_or(Duration::from_millis(100), |t| {
                    self.window.saturating_sub(now.duration_since(*t))
                });
                return Err(wait);
            }
            log.push_back(now);
            *in_flight += 1;
        }
        tokio::time::sleep(latency).await;
        if let Ok(mut projects) = self.projects.lock() {
            if let Some((_, in_flight)) = projects.get_mut(project) {
                *in_flight -= 1;
            }
        }
        self.served.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

async fn goodput(seconds: u64) -> BenchResult<()> {
    // Time is scaled down 10x: a 6 s window stands for a minute, 100-300 ms for 1-3 s.
    let window = Duration::from_secs(6);
    let rpm: u32 = 60;
    let concurrency: u32 = 3;
    let projects = 2;
    let windows = (seconds / window.as_secs()).max(2);
    let run = window * windows as u32;
    let capacity_per_second = f64::from(rpm * projects) / window.as_secs_f64();
    let arrivals_per_second = capacity_per_second * 3.0;
    println!(
        "goodput: {projects} projects x 2 keys, each project {rpm} per {} s window (scaled \
         minute) and {concurrency} at once, latency 100-300 ms; jobs arrive at 3x capacity \
         ({arrivals_per_second:.0}/s) for {} s",
        window.as_secs(),
        run.as_secs()
    );
    let upstream = Arc::new(FakeUpstream {
        window,
        rpm: rpm as usize,
        concurrency,
        projects: Mutex::new(HashMap::new()),
        throttled: AtomicU64::new(0),
        served: AtomicU64::new(0),
    });
    let group = Limits {
        requests_per_minute: Some(rpm),
        concurrency: Some(concurrency),
    };
    // The limiter's window is 1 % longer than the upstream's, so scheduling jitter between
    // admission and arrival cannot squeeze one extra request into the upstream's window.
    let settings = LimiterSettings {
        window: window + window / 100,
        busy_retry: Duration::from_millis(20),
        ..LimiterSettings::default()
    };
    let server = LocalRedisServer::start(&[])?;
    let pool = pool(
        SqliteDb::in_memory().map_err(err("db"))?,
        projects,
        2,
        group,
        Limits::default(),
    )
    .await?;
    let limiter = Arc::new(redis_limiter(&server, settings, pool).await?);

    let started = Instant::now();
    let admitted_in_run = Arc::new(AtomicU64::new(0));
    let mut jobs = Vec::new();
    let gap = Duration::from_secs_f64(1.0 / arrivals_per_second);
    let mut next = started;
    while next < started + run {
        tokio::time::sleep_until(next.into()).await;
        next += gap;
        let (limiter, upstream, admitted) = (
            Arc::clone(&limiter),
            Arc::clone(&upstream),
            Arc::clone(&admitted_in_run),
        );
        jobs.push(tokio::spawn(async move {
            // The dispatch loop: acquire, call, release; a denial re-delays the job for the
            // time the limiter returned.
            loop {
                if started.elapsed() > run {
                    return;
                }
                let permit = match limiter.acquire(&request(0, Duration::from_secs(30))).await {
                    Ok(Admission::Granted(permit)) => permit,
                    Ok(Admission::Denied { retry_after }) => {
                        tokio::time::sleep(retry_after).await;
                        continue;
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let project = permit
                    .key_id
                    .as_deref()
                    .and_then(|k| k.rsplit_once('-'))
                    .map(|(p, _)| p.replace("key-", "project-"))
                    .unwrap_or_default();
                let latency = Duration::from_millis(rand::thread_rng().gen_range(100..=300));
                if started.elapsed() <= run {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
                match upstream.call(&project, latency).await {
                    Ok(()) => {
                        let _ = limiter.release(&permit, KeyOutcome::Success).await;
                        return;
                    }
                    Err(wait) => {
                        let _ = limiter
                            .release(
                                &permit,
                                KeyOutcome::Throttled {
                                    retry_after: Some(wait),
                                },
                            )
                            .await;
                    }
                }
            }
        }));
    }
    for job in jobs {
        let _ = job.await;
    }
    let capacity = f64::from(rpm * projects) * windows as f64;
    let admitted = admitted_in_run.load(Ordering::Relaxed) as f64;
    println!(
        "  admitted {admitted:.0} of a capacity of {capacity:.0} in {} s: {:.1} % of capacity used; \
         upstream 429s {}; served {}",
        run.as_secs(),
        admitted / capacity * 100.0,
        upstream.throttled.load(Ordering::Relaxed),
        upstream.served.load(Ordering::Relaxed),
    );
    Ok(())
}

async fn memory() -> BenchResult<()> {
    let tenants = 200;
    let keys_per_group = 4;
    let groups = 5;
    let key_rpm = 60;
    println!(
        "memory: {tenants} active tenants each holding a lease, {} keys in {groups} projects each \
         with a full window of {key_rpm} admissions (steady state at its limit)",
        groups * keys_per_group
    );
    let server = LocalRedisServer::start(&[])?;
    let group = Limits {
        requests_per_minute: Some(key_rpm * keys_per_group),
        concurrency: Some(1_000),
    };
    let key = Limits {
        requests_per_minute: Some(key_rpm),
        concurrency: Some(100),
    };
    let pool = pool(
        SqliteDb::in_memory().map_err(err("db"))?,
        groups,
        keys_per_group,
        group,
        key,
    )
    .await?;
    let limiter = redis_limiter(&server, LimiterSettings::default(), pool).await?;

    let total = groups * keys_per_group * key_rpm;
    let mut admitted = 0;
    let mut held = Vec::new();
    // Failures would cool keys (and end the fill early); a neutral outcome still records a sample.
    let mut outcomes = [KeyOutcome::Success, KeyOutcome::Neutral].iter().cycle();
    while admitted < total {
        let tenant = admitted % tenants;
        match limiter
            .acquire(&request(tenant, Duration::from_secs(120)))
            .await
            .map_err(err("acquire"))?
        {
            Admission::Granted(permit) => {
                admitted += 1;
                if admitted <= tenants {
                    held.push(permit);
                } else if let Some(outcome) = outcomes.next() {
                    limiter
                        .release(&permit, outcome.clone())
                        .await
                        .map_err(err("release"))?;
                }
            }
            Admission::Denied { .. } => break,
        }
    }

    let mut connection = limiter.connection();
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut connection)
        .await
        .map_err(err("keys"))?;
    let mut by_level: HashMap<&str, (u64, u64)> = HashMap::new();
    for name in &names {
        let bytes: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(name)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut connection)
            .await
            .map_err(err("memory"))?;
        // Lease counts and the lease index are shared by every level; logs and outcome
        // lists belong to one level.
        let level = if name.ends_with(":c") || name.ends_with(":x") {
            "leases"
        } else if name.contains(":t:") {
            "tenant"
        } else if name.contains(":k:") {
            "key"
        } else if name.contains(":q:") {
            "project"
        } else {
            "global"
        };
        let entry = by_level.entry(level).or_default();
        entry.0 += bytes.unwrap_or(0);
        entry.1 += 1;
    }
    let per = |level: &str, count: u32| {
        by_level
            .get(level)
            .map_or(0.0, |(b, _)| *b as f64 / f64::from(count))
    };
    let lease = per("leases", tenants);
    let tenant = per("tenant", tenants);
    let key = per("key", groups * keys_per_group);
    println!(
        "  admissions {admitted}; redis keys {}; bytes per live lease (its counts and index entry) \
         {lease:.0}, per tenant log {tenant:.0}, per key (admission log, outcomes) {key:.0}, \
         per project {:.0}, other {:.0}; per active tenant/key pair {:.0} bytes",
        names.len(),
        per("project", groups),
        per("global", 1),
        lease + tenant + key,
    );
    drop(held);
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().map_or("all", String::as_str).to_owned();
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);

    let result = match what.as_str() {
        "crash-holder" => match (args.get(1), args.get(2)) {
            (Some(db), Some(url)) => crash_holder(db, url).await,
            _ => Err("crash-holder needs a database path and a redis url".into()),
        },
        "throughput" => throughput(seconds).await,
        "overadmission" => overadmission(seconds).await,
        "crash" => crash().await,
        "goodput" => goodput(seconds.max(30)).await,
        "memory" => memory().await,
        "all" => {
            async {
                throughput(seconds).await?;
                overadmission(seconds).await?;
                crash().await?;
                goodput(seconds.max(30)).await?;
                memory().await
            }
            .await
        }
        other => Err(format!(
            "unknown part {other}; use throughput, overadmission, crash, goodput, memory or all"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}
