//! Released migrations are immutable: their checksums are pinned in `migrations.lock`.
//! Editing a released file (even whitespace) fails here before it can fail in production,
//! where refinery would refuse every tenant database as divergent.

use tenant_migrations::MigrationSet;

fn current() -> Vec<String> {
    let mut lines = Vec::new();
    for set in MigrationSet::ALL {
        for (version, name, checksum) in set.migrations() {
            lines.push(format!("{} V{version}__{name} {checksum}", set.name()));
        }
    }
    lines
}

fn key(line: &str) -> &str {
    line.rsplit_once(' ').map(|(k, _)| k).unwrap_or(line)
}

#[test]
fn released_migrations_are_unchanged() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations.lock");
    let lock = std::fs::read_to_string(path).expect("migrations.lock exists");
    let pinned: Vec<&str> = lock
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    let now = current();
    for line in &pinned {
        match now.iter().find(|l| key(l) == key(line)) {
            None => panic!(
                "released migration {} was deleted; released migrations must stay",
                key(line)
            ),
            Some(l) => assert_eq!(
                l.as_str(),
                *line,
                "released migration {} was edited; add a new migration instead",
                key(line)
            ),
        }
    }
    let new: Vec<&str> = now
        .iter()
        .filter(|l| !pinned.iter().any(|p| key(p) == key(l)))
        .map(String::as_str)
        .collect();
    assert!(
        new.is_empty(),
        "new migrations are not pinned yet; append these lines to tenant-migrations/migrations.lock:\n{}",
        new.join("\n")
    );
}

#[test]
fn migration_files_use_lf_and_no_non_transactional_statements() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
    for set in std::fs::read_dir(dir).unwrap() {
        for file in std::fs::read_dir(set.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let sql = std::fs::read_to_string(&path).unwrap();
            assert!(!sql.contains('\r'), "{path:?} has CRLF line endings");
            assert!(
                !sql.to_uppercase().contains("CONCURRENTLY"),
                "{path:?}: refinery runs each migration in a transaction; CONCURRENTLY cannot run there"
            );
        }
    }
}
