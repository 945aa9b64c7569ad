//! The tenant-router daemon: `tenant-router [--config FILE]`.

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    version,
    about = "Routes internal services' calls to each tenant's own database"
)]
struct Args {
    /// TOML configuration file (TENANT_ROUTER__* environment variables override it).
    #[arg(long, short, env = "TENANT_ROUTER_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    service_kit::init_tracing().map_err(|e| anyhow::anyhow!(e))?;
    let config = tenant_router::Config::load(args.config.as_deref())?;
    let grpc = tokio::net::TcpListener::bind(config.grpc_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.grpc_listen))?;
    let http = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.http_listen))?;
    // One line on stdout with the bound addresses (ports may have been 0), for supervisors
    // and tests; logs go to stderr.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "listening grpc={} http={}",
            grpc.local_addr()?,
            http.local_addr()?
        );
        let _ = out.flush();
    }
    tenant_router::server::run(config, grpc, http, service_kit::shutdown_signal()).await?;
    Ok(())
}
