//! The control-plane daemon: `control-plane [--config FILE]`.

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    version,
    about = "Tenant catalog, provisioning, fleet migrations and route directory"
)]
struct Args {
    /// TOML configuration file (CONTROL_PLANE__* environment variables override it).
    #[arg(long, short, env = "CONTROL_PLANE_CONFIG")]
    config: Option<PathBuf>,
    /// Print a fresh base64 master key and exit.
    #[arg(long)]
    generate_key: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.generate_key {
        #[allow(clippy::print_stdout)]
        {
            println!("{}", control_plane::crypto::random_master_key());
        }
        return Ok(());
    }
    service_kit::init_tracing();
    let config = control_plane::Config::load(args.config.as_deref())?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening {}", listener.local_addr()?);
        let _ = out.flush();
    }
    control_plane::server::run(config, listener, service_kit::shutdown_signal()).await?;
    Ok(())
}
