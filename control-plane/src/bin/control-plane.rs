//! The control-plane daemon: `control-plane [--config FILE] [COMMAND]`.

use clap::{Parser, Subcommand};
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
    /// Print a fresh base64 token signing key (an Ed25519 seed) and exit.
    #[arg(long)]
    generate_signing_key: bool,
    /// Print the public key routers verify caller tokens with (`token_verifying_key`) and
    /// exit.
    #[arg(long)]
    print_verifying_key: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Register an operator if needed and print a token for it (bootstrap of the first
    /// admin: needs the configuration, not a token).
    OperatorToken {
        #[arg(long)]
        name: String,
        /// viewer, operator or admin (an existing operator keeps its role).
        #[arg(long, default_value = "admin")]
        role: String,
        /// Lifetime in seconds (0: the configured default).
        #[arg(long, default_value_t = 0)]
        ttl_secs: u64,
    },
    /// Decrypt a backup object from the configured store with the master key alone (no
    /// catalog needed: disaster recovery), checking it as it streams; writes the
    /// pg_dump archive to --out (`-`: standard output).
    DecryptBackup {
        /// The object's key in the store (e.g. catalog/1763800000-0a1b2c3d4e5f.tnbk).
        object: String,
        #[arg(long)]
        out: String,
    },
}

#[allow(clippy::print_stdout)]
fn print(line: &str) {
    println!("{line}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.generate_key || args.generate_signing_key {
        print(&control_plane::crypto::random_master_key());
        return Ok(());
    }
    let config = control_plane::Config::load(args.config.as_deref())?;
    if args.print_verifying_key {
        let signer = caller_auth::Signer::from_base64(&config.token_signing_key)?;
        print(&signer.public_base64());
        return Ok(());
    }
    if let Some(Command::OperatorToken {
        name,
        role,
        ttl_secs,
    }) = args.command
    {
        let role = control_plane::auth::Role::parse(&role)?;
        let token =
            control_plane::bootstrap::operator_token(&config, &name, role, ttl_secs).await?;
        print(&token);
        return Ok(());
    }
    if let Some(Command::DecryptBackup { object, out }) = args.command {
        let store = control_plane::backup::Store::open(&config.backup.store)?;
        let secrets = config.secret_box()?;
        let path = if out == "-" {
            "/dev/stdout"
        } else {
            out.as_str()
        };
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create {out}: {e}"))?;
        let n = control_plane::backup::decrypt(&store, &secrets, &object, &mut file).await?;
        tracing::debug!(bytes = n, "backup decrypted");
        return Ok(());
    }
    service_kit::init_tracing().map_err(|e| anyhow::anyhow!(e))?;
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
