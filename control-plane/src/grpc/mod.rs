//! gRPC services of the control plane.

mod access;
mod admin;
mod backups;
mod directory;

pub use admin::AdminService;
pub use directory::DirectoryService;
