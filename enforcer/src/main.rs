//! `enforcer`: run the proxy, check a config, or run the demo.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use enforcer::config::Config;
use enforcer::server::Gateway;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "The LLM-Aware Gateway enforcer: a reverse proxy that protects failing slices of traffic."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy with a config file.
    Run {
        /// The YAML config.
        #[arg(long, short, env = "ENFORCER_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file and exit (non-zero on errors).
    CheckConfig {
        /// The YAML config.
        config: PathBuf,
    },
    /// The embedded default: the built-in demo upstream and the enforcer in one process.
    Demo {
        /// The enforcer config (its routes point at the demo upstream).
        #[arg(long, default_value = "deploy/enforcer.demo.yaml")]
        config: PathBuf,
        /// Where the demo upstream listens.
        #[arg(long, default_value = "127.0.0.1:18081")]
        upstream: SocketAddr,
    },
    /// Only the demo upstream.
    DemoUpstream {
        /// Where it listens.
        #[arg(long, default_value = "127.0.0.1:18081")]
        listen: SocketAddr,
    },
}

fn init_logs() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The file, with `LAG_ETCD_ENDPOINTS` / `LAG_KAFKA_BROKERS` applied (deployments set them).
fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    let config = Config::load(path).and_then(|mut c| {
        c.apply_env(|name| std::env::var(name).ok())?;
        Ok(c)
    });
    config.map_err(|e| {
        eprintln!("error: {}: {e}", path.display());
        ExitCode::from(2)
    })
}

async fn shutdown_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    token.cancel();
}

async fn run_gateway(config: Config, token: CancellationToken) -> ExitCode {
    let registry = prometheus::Registry::new();
    match Gateway::start(config, &registry, token.clone()).await {
        Ok(mut gw) => {
            // No in-process pipeline here: drain the event queue so it never sits full.
            gw.discard_unconsumed_events();
            tokio::spawn(shutdown_on_signal(token));
            gw.wait().await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match load(&config) {
            Ok(c) => {
                println!("{}: ok ({} routes)", config.display(), c.routes.len());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logs();
            run_gateway(config, CancellationToken::new()).await
        }
        Command::Demo { config, upstream } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logs();
            let token = CancellationToken::new();
            let up = match enforcer::demo::start(upstream, Default::default(), token.child_token())
                .await
            {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("error: demo upstream on {upstream}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            eprintln!(
                "demo upstream on http://{up}; enforcer on http://{} (admin http://{})\n\
                 try:  curl -s -XPOST localhost:{}/pay -d '{{\"channel\":\"alipay\"}}'\n\
                 fail one channel:  curl -s -XPUT {up}/faults/alipay -d '{{\"mode\":\"error\"}}'",
                config.listen,
                config.admin_listen,
                config.listen.port()
            );
            run_gateway(config, token).await
        }
        Command::DemoUpstream { listen } => {
            init_logs();
            let token = CancellationToken::new();
            match enforcer::demo::start(listen, Default::default(), token.child_token()).await {
                Ok(a) => {
                    eprintln!("demo upstream on http://{a}");
                    shutdown_on_signal(token).await;
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {listen}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
