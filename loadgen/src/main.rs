//! `tally-loadgen`: replays checkout traffic against a running tally server, or several nodes
//! sharing one log, open loop, then checks every campaign's totals and statistics against the
//! ground truth of what was acknowledged.

/// mimalloc, as `tally serve` runs: the load generator shares the machine with the server, so
/// every microsecond it spends per request is one the server does not get; glibc's allocator
/// took about 15% of its CPU under load (planned bodies, signatures, responses, ground truth).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use tally_api::signature::SigningSecret;
use tally_loadgen::run::{RunConfig, run};
use tally_loadgen::schedule::Profile;

#[derive(Debug, Parser)]
#[command(
    name = "tally-loadgen",
    version,
    about = "Replays checkout donation traffic against a tally server and verifies its totals"
)]
struct Args {
    /// A server to send to; repeat it, or list several separated by commas, to spread the load
    /// over several nodes sharing one log.
    #[arg(
        long = "target",
        value_name = "URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080",
        value_parser = target_url
    )]
    targets: Vec<String>,
    /// The server's callback signing secret (as text); default: from --data-dir.
    #[arg(long, env = "TALLY_SIGNING_SECRET", hide_env_values = true)]
    signing_secret: Option<String>,
    /// The server's admin token; default: from --data-dir.
    #[arg(long, env = "TALLY_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// A local server's data directory, to read its generated secret and token from.
    #[arg(long, env = "TALLY_DATA_DIR", default_value = "./tally-data")]
    data_dir: PathBuf,
    /// Traffic shape: steady, dinner-rush or spike.
    #[arg(long, default_value = "dinner-rush")]
    profile: Profile,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Average checkouts per second over the run.
    #[arg(long, default_value_t = 500.0, value_parser = positive_rate)]
    rate: f64,
    /// Seeds the traffic mix (campaigns, amounts, resends, conflicts, bad requests).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Part of every payment_ref; default: the start time, so runs never share payments.
    #[arg(long, value_parser = run_id)]
    run_id: Option<String>,
    /// Donations per request: 1 sends single callbacks, more uses the batch endpoint.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
    batch: u16,
    /// Requests in flight at most (and HTTP connections kept open).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    connections: u16,
    /// Skip the final comparison with the server's totals and statistics.
    #[arg(long)]
    no_verify: bool,
    /// Write the report, with a per-second series, to this file: a page with charts if its name
    /// ends in `.html`, JSON otherwise.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Start the server with this shell command (in the foreground) and stop it at the end.
    #[arg(long)]
    server_cmd: Option<String>,
    /// SIGKILL the server started by --server-cmd this often, and restart it.
    #[arg(long, value_parser = humantime::parse_duration, requires = "server_cmd")]
    kill_every: Option<Duration>,
}

fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(rate),
        _ => Err(format!("must be a positive number, got {text:?}")),
    }
}

fn target_url(text: &str) -> Result<String, String> {
    let url = text.trim();
    if url.is_empty() {
        Err("must be a URL such as http://127.0.0.1:8080".into())
    } else {
        Ok(url.to_owned())
    }
}

fn run_id(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 32
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if valid {
        Ok(text.to_owned())
    } else {
        Err("must be 1-32 letters, digits or '-'".into())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The sender runs on this one thread (the planner has a thread of its own): measured on two
    // cores shared with the server, a second runtime thread cost more in wake-ups than it gave.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tally-loadgen: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_async(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            let chain: Vec<String> = error.chain().map(ToString::to_string).collect();
            eprintln!("tally-loadgen: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

async fn main_async(args: Args) -> anyhow::Result<bool> {
    let config = RunConfig {
        profile: args.profile,
        duration: args.duration,
        rate: args.rate,
        seed: args.seed,
        run_id: args.run_id.clone().unwrap_or_else(default_run_id),
        batch: usize::from(args.batch),
        connections: usize::from(args.connections),
        verify: !args.no_verify,
        progress: true,
        server_cmd: args.server_cmd.clone(),
        kill_every: args.kill_every,
    };
    let report = run(&config, &args.targets, || secret_and_token(&args)).await?;
    if let Some(verification) = &report.verification {
        for mismatch in &verification.mismatches {
            println!("MISMATCH {mismatch}");
        }
    }
    report.write_table(&mut std::io::stdout().lock())?;
    if let Some(path) = &args.report {
        let is_page = path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("html"));
        let contents = if is_page {
            tally_loadgen::report_page::render(&report)?.into_bytes()
        } else {
            serde_json::to_vec_pretty(&report)?
        };
        std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report.verification.as_ref().is_none_or(|v| v.passed))
}

/// The start time in base 36: short, and different for every run.
fn default_run_id() -> String {
    let mut millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut digits = Vec::new();
    while millis > 0 {
        digits.push(char::from_digit((millis % 36) as u32, 36).unwrap_or('0'));
        millis /= 36;
    }
    digits.iter().rev().collect()
}

fn secret_and_token(args: &Args) -> anyhow::Result<(SigningSecret, String)> {
    let secret = match &args.signing_secret {
        Some(text) => SigningSecret::from_text(text),
        None => {
            let path = args.data_dir.join("signing-secret");
            let hex = std::fs::read_to_string(&path).with_context(|| {
                format!("no --signing-secret and cannot read {}", path.display())
            })?;
            SigningSecret::from_hex(hex.trim())
                .map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))?
        }
    };
    let token = match &args.admin_token {
        Some(token) => token.clone(),
        None => {
            let path = args.data_dir.join("admin-token");
            std::fs::read_to_string(&path)
                .with_context(|| format!("no --admin-token and cannot read {}", path.display()))?
                .trim()
                .to_owned()
        }
    };
    Ok((secret, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(command_line: &[&str]) -> Vec<String> {
        let arguments = std::iter::once("tally-loadgen").chain(command_line.iter().copied());
        Args::try_parse_from(arguments)
            .expect("a valid command line")
            .targets
    }

    #[test]
    fn targets_repeat_or_come_as_a_comma_separated_list() {
        assert_eq!(targets(&[]), ["http://127.0.0.1:8080"]);
        assert_eq!(targets(&["--target", "http://a:1"]), ["http://a:1"]);
        assert_eq!(
            targets(&[
                "--target",
                "http://a:1, http://b:2",
                "--target",
                "http://c:3"
            ]),
            ["http://a:1", "http://b:2", "http://c:3"]
        );
        assert!(
            Args::try_parse_from(["tally-loadgen", "--target", "http://a:1,,http://b:2"]).is_err()
        );
    }
}
