//! The migration runner against a real PostgreSQL server: every sector migrates, re-runs
//! are no-ops, the advisory lock keeps two runs apart, divergent history is refused, and
//! the unique keys webhook ingestion relies on hold.
#![allow(clippy::unwrap_used)]

use tenant_migrations::{
    migrate, targets, MigrateError, MigrationSet, Sector, SectorSchema, MIGRATION_LOCK_KEY,
};

async fn fresh(prefix: &str) -> tokio_postgres::Client {
    let pg = pg_harness::shared();
    let db = pg.fresh_database(prefix).await.unwrap();
    pg.connect(&db).await.unwrap()
}

#[tokio::test]
async fn every_sector_migrates_and_reruns_are_noops() {
    for &sector in Sector::ALL {
        let mut client = fresh(sector.as_str()).await;
        let first = migrate(&mut client, sector).await.unwrap();
        let (common, sector_v) = targets(sector);
        assert_eq!(
            (first.common_version, first.sector_version),
            (common, sector_v)
        );
        let expected = MigrationSet::Common.migrations().len() as u32
            + sector
                .set()
                .map(|s| s.migrations().len() as u32)
                .unwrap_or(0);
        assert_eq!(first.applied, expected, "{sector}");
        let again = migrate(&mut client, sector).await.unwrap();
        assert_eq!(again.applied, 0);
        assert_eq!(
            tenant_migrations::current_versions(&client, sector)
                .await
                .unwrap(),
            (common, sector_v)
        );
    }
}

#[tokio::test]
async fn a_held_lock_makes_the_second_run_busy() {
    let pg = pg_harness::shared();
    let db = pg.fresh_database("busy").await.unwrap();
    let holder = pg.connect(&db).await.unwrap();
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .unwrap();
    let mut client = pg.connect(&db).await.unwrap();
    let err = migrate(&mut client, Sector::Varejo).await.unwrap_err();
    assert!(matches!(err, MigrateError::Busy), "{err}");
    // Nothing was applied while busy.
    assert_eq!(
        tenant_migrations::current_versions(&client, Sector::Varejo)
            .await
            .unwrap(),
        (0, 0)
    );
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .unwrap();
    migrate(&mut client, Sector::Varejo).await.unwrap();
}

#[tokio::test]
async fn edited_history_is_refused_as_divergent() {
    let mut client = fresh("divergent").await;
    migrate(&mut client, Sector::Servicos).await.unwrap();
    client
        .execute(
            "UPDATE refinery_schema_history SET checksum = '1' WHERE version = 1",
            &[],
        )
        .await
        .unwrap();
    let err = migrate(&mut client, Sector::Servicos).await.unwrap_err();
    assert!(matches!(err, MigrateError::Divergent(_)), "{err}");
}

#[tokio::test]
async fn a_failing_migration_is_reported_and_rolled_back_whole() {
    let mut client = fresh("failing").await;
    // Sabotage V1: a conflicting `leads` table already exists.
    client
        .batch_execute("CREATE TABLE leads (id int)")
        .await
        .unwrap();
    let err = migrate(&mut client, Sector::Servicos).await.unwrap_err();
    assert!(matches!(err, MigrateError::Failed(_)), "{err}");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(
        tenant_migrations::current_versions(&client, Sector::Servicos)
            .await
            .unwrap(),
        (0, 0)
    );
    // V1 ran in one transaction: none of its other tables were left behind.
    let conversas: bool = client
        .query_one("SELECT to_regclass('conversas') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!conversas);
}

#[tokio::test]
async fn ingestion_unique_keys_hold() {
    let mut client = fresh("unique").await;
    migrate(&mut client, Sector::Veiculos).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO leads (wa_id) VALUES ('5511912345678');
             INSERT INTO conversas (lead_id) VALUES (1);
             INSERT INTO mensagens (conversa_id, wamid, direcao) VALUES (1, 'wamid.A', 'entrada');",
        )
        .await
        .unwrap();
    for dup in [
        "INSERT INTO leads (wa_id) VALUES ('5511912345678')",
        "INSERT INTO conversas (lead_id) VALUES (1)",
        "INSERT INTO mensagens (conversa_id, wamid, direcao) VALUES (1, 'wamid.A', 'entrada')",
    ] {
        let err = client.batch_execute(dup).await.unwrap_err();
        assert_eq!(
            err.as_db_error().unwrap().code(),
            &tokio_postgres::error::SqlState::UNIQUE_VIOLATION,
            "{dup}"
        );
    }
    // A closed conversation makes room for a new open one.
    client
        .batch_execute(
            "UPDATE conversas SET status = 'fechada'; INSERT INTO conversas (lead_id) VALUES (1)",
        )
        .await
        .unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM conversas", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

#[test]
fn pending_lists_what_a_version_lacks() {
    let all = tenant_migrations::pending(Sector::Imoveis, 0, 0);
    assert!(all.iter().any(|m| m == "common/V1__base"));
    assert!(all.iter().any(|m| m == "imoveis/V1__imoveis"));
    assert_eq!(
        tenant_migrations::pending(Sector::Imoveis, 1, 1),
        vec![
            "common/V2__lead_tags".to_string(),
            "common/V3__eventos".to_string()
        ]
    );
    let (c, s) = targets(Sector::Imoveis);
    assert!(tenant_migrations::pending(Sector::Imoveis, c, s).is_empty());
}

/// Every stored message, status change and new lead is recorded in the outbox, in the
/// same transaction as the change; updates that change no status and upserts that find
/// the lead record nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_recorded_in_the_outbox_by_the_same_transaction() {
    let pg = pg_harness::shared();
    let db = pg.fresh_database("outbox").await.unwrap();
    let mut client = pg.connect(&db).await.unwrap();
    tenant_migrations::migrate(&mut client, Sector::Servicos)
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO leads (wa_id, nome) VALUES ('5511900000001', 'Ana'); \
             INSERT INTO leads (wa_id) VALUES ('5511900000001') ON CONFLICT (wa_id) DO UPDATE SET nome = 'Ana B'; \
             INSERT INTO conversas (lead_id) SELECT id FROM leads; \
             INSERT INTO mensagens (conversa_id, wamid, direcao, conteudo) SELECT id, 'w1', 'entrada', 'oi' FROM conversas; \
             INSERT INTO mensagens (conversa_id, wamid, direcao, conteudo, status) SELECT id, 'w2', 'saida', 'olá', 'sent' FROM conversas; \
             UPDATE mensagens SET status = 'read' WHERE wamid = 'w2'; \
             UPDATE mensagens SET conteudo = 'oi!' WHERE wamid = 'w1';",
        )
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.batch_execute("INSERT INTO leads (wa_id) VALUES ('5511900000002')")
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let rows: Vec<(String, serde_json::Value)> = client
        .query("SELECT tipo, dados FROM eventos_saida ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let kinds: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "lead.created",
            "message.received",
            "message.sent",
            "message.status"
        ]
    );
    assert_eq!(rows[1].1["body"], "oi");
    assert_eq!(rows[3].1["previous"], "sent");
    assert_eq!(rows[3].1["status"], "read");
}
