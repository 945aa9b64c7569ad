//! `tenantctl`: the operators' command line over the control plane's gRPC API.

fn main() -> std::process::ExitCode {
    control_plane::cli::main()
}
