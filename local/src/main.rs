//! `imagegen-local`: the local runner.
//!
//! - `imagegen-local serve [--data DIR] [--port N]`: serve the API until Ctrl-C, printing a
//!   tenant key and a curl example (`make run`). Webhook and image URLs on loopback or plain
//!   http are refused unless `IMAGEGEN_ALLOW_LOOPBACK=1` (`make run` sets it).
//! - `imagegen-local demo [--data DIR]`: run the end-to-end demo and exit (`make demo`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use imagegen::domain::Plan;
use imagegen::service::admin;
use imagegen_local::{demo, LocalConfig, Runner};
use secrecy::{ExposeSecret, SecretString};
use tracing_subscriber::EnvFilter;

struct Args {
    command: String,
    data: Option<PathBuf>,
    port: u16,
    prompt: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_else(|| "serve".into());
    let mut parsed = Args {
        command,
        data: None,
        port: 8080,
        prompt: "a lighthouse on a cliff at dusk, oil painting".into(),
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--data" => parsed.data = Some(PathBuf::from(value)),
            "--port" => parsed.port = value.parse().map_err(|_| "--port takes a number")?,
            "--prompt" => parsed.prompt = value,
            other => {
                return Err(format!(
                    "unknown flag {other}; use --data, --port or --prompt"
                ))
            }
        }
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match args.command.as_str() {
        "demo" => run_demo(args).await,
        "serve" => serve(args).await,
        other => {
            eprintln!("error: unknown command {other}; use serve or demo");
            ExitCode::from(2)
        }
    }
}

async fn run_demo(args: Args) -> ExitCode {
    let data = args.data.unwrap_or_else(|| {
        PathBuf::from(".demo").join(chrono::Utc::now().format("%Y%m%dT%H%M%S").to_string())
    });
    println!("imagegen demo (data folder {})", data.display());
    match demo::run(data, &args.prompt).await {
        Ok(outcome) => {
            println!(
                "demo passed: job {} made by {}; image at {}",
                outcome.job_id,
                outcome.provider,
                outcome.image_path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> ExitCode {
    let data = args.data.unwrap_or_else(|| PathBuf::from(".data"));
    let admin_token = std::env::var("IMAGEGEN_ADMIN_TOKEN")
        .map(SecretString::from)
        .unwrap_or_else(|_| SecretString::from(format!("local-admin-{}", ulid_like())));
    let mut config = LocalConfig::new(data, admin_token.clone());
    config.bind = SocketAddr::from(([127, 0, 0, 1], args.port));
    config.allow_loopback = match loopback_flag(std::env::var("IMAGEGEN_ALLOW_LOOPBACK").ok()) {
        Ok(allow) => allow,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    config.loopback_only = std::env::var("IMAGEGEN_OUTBOUND").is_ok_and(|v| v == "loopback-only");
    config.provider = match imagegen_local::provider_from_env() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runner = match Runner::start(config).await {
        Ok(runner) => runner,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tenant = match admin::create_tenant(&runner.app, "local", Plan::default()).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot create the local tenant: {e}");
            return ExitCode::FAILURE;
        }
    };
    let base = &runner.base_url;
    println!(
        "imagegen local runner on {base} (provider: {})",
        runner.app.provider.name()
    );
    println!("admin token:  {}", admin_token.expose_secret());
    println!("tenant key:   {}", tenant.key.expose());
    println!();
    println!("try:");
    println!(
        "  curl -s -X POST {base}/v1/images:generate -H 'Authorization: Bearer {}' \\\n       -H 'Content-Type: application/json' -d '{{\"prompt\":\"a red fox in snow\"}}'",
        tenant.key.expose()
    );
    println!(
        "  curl -s {base}/v1/jobs/JOB_ID -H 'Authorization: Bearer {}'",
        tenant.key.expose()
    );
    let _ = tokio::signal::ctrl_c().await;
    runner.shutdown().await;
    ExitCode::SUCCESS
}

/// `IMAGEGEN_ALLOW_LOOPBACK`: loopback and plain-http webhook and image URLs are accepted only
/// when it is `1` or `true`.
fn loopback_flag(raw: Option<String>) -> Result<bool, String> {
    match raw.as_deref().map(str::trim) {
        None | Some("" | "0" | "false") => Ok(false),
        Some("1" | "true") => Ok(true),
        Some(other) => Err(format!(
            "IMAGEGEN_ALLOW_LOOPBACK must be 1, true, 0 or false, not {other:?}"
        )),
    }
}

fn ulid_like() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::loopback_flag;

    #[test]
    fn loopback_is_allowed_only_when_the_variable_says_so() {
        assert_eq!(loopback_flag(None), Ok(false));
        assert_eq!(loopback_flag(Some("0".into())), Ok(false));
        assert_eq!(loopback_flag(Some("1".into())), Ok(true));
        assert_eq!(loopback_flag(Some("true".into())), Ok(true));
        assert!(loopback_flag(Some("yes please".into())).is_err());
    }
}
