//! Rebuilds the crate when a migration is added: `refinery::embed_migrations!` reads its
//! directory at compile time, which cargo does not track by itself.

fn main() {
    println!("cargo:rerun-if-changed=catalog-migrations");
    println!("cargo:rerun-if-changed=ingest-migrations");
}
