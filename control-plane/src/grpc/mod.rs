//! gRPC services of the control plane.

mod access;
mod accounts;
mod admin;
mod backups;
mod directory;
mod inbox;
mod numbers;
mod settings;
mod users;

pub use accounts::AccountsService;
pub use admin::AdminService;
pub use directory::DirectoryService;
