//! What a tenant database holds, compared with what the shipped migrations create.
//!
//! The inventory lists every object a role could have defined in a database (relations,
//! columns, routines, types, schemas, triggers, rules, policies, constraints, defaults,
//! operators, casts, extensions, publications, ...) by its stable identity
//! (`pg_identify_object`), with a hash of its definition where it carries code or
//! semantics. Comparing a tenant with a reference database migrated to the same versions
//! tells what someone added (extras: removed, tables quarantined) and what someone changed
//! in place (modified: never repaired silently). The queries only read the system catalogs,
//! schema-qualified, so any role may run them safely.

use std::collections::HashMap;
use tenant_migrations::quote_ident;
use tokio_postgres::Client;

/// Schema extra tables are moved to (no login role has any privilege there).
pub const QUARANTINE_SCHEMA: &str = "quarantine";

/// One object of a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// `pg_identify_object_as_address`'s type (`table`, `function`, `trigger`, ...), or
    /// `domain` for a domain.
    pub kind: String,
    /// Its name parts (schema, table, column, ...).
    pub names: Vec<String>,
    /// Its identity as PostgreSQL prints it (quoted as needed).
    pub identity: String,
    /// Hash of its definition ("" hashed for objects without one).
    pub def: String,
}

impl Item {
    fn key(&self) -> (&str, &str) {
        (&self.kind, &self.identity)
    }

    /// `kind identity`, for reports.
    pub fn describe(&self) -> String {
        format!("{} {}", self.kind, self.identity)
    }
}

/// What a tenant database holds beyond or unlike its reference.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drift {
    /// Objects the reference does not have.
    pub extra: Vec<Item>,
    /// Objects the reference has with another definition.
    pub modified: Vec<Item>,
}

/// Lists every user-defined object of the database `client` is connected to.
///
/// Sets the session's `search_path` to `pg_catalog` first: the definitions PostgreSQL
/// prints qualify names by what is visible, so two databases compare only under one path.
pub async fn inventory(client: &Client) -> Result<Vec<Item>, tokio_postgres::Error> {
    client.batch_execute("SET search_path = pg_catalog").await?;
    let rows = client.query(INVENTORY_SQL, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| Item {
            kind: r.get(0),
            names: r.get(1),
            identity: r.get(2),
            def: r.get(3),
        })
        .collect())
}

/// Compares a tenant's inventory with its reference's. Objects the tenant lacks are not
/// drift (a failed migration leaves fewer objects, never hostile ones).
pub fn compare(tenant: &[Item], reference: &[Item]) -> Drift {
    let by_key: HashMap<(&str, &str), &Item> = reference.iter().map(|i| (i.key(), i)).collect();
    let mut drift = Drift::default();
    for item in tenant {
        match by_key.get(&item.key()) {
            None if quarantined(item) => {}
            None => drift.extra.push(item.clone()),
            Some(r) if r.def != item.def => drift.modified.push(item.clone()),
            Some(_) => {}
        }
    }
    drift
}

/// The quarantine schema and the tables already in it are left where they are (the
/// tables keep their data; anything else in that schema is still an extra).
fn quarantined(item: &Item) -> bool {
    let in_quarantine = item.names.first().map(String::as_str) == Some(QUARANTINE_SCHEMA);
    (item.kind == "schema" && item.identity == QUARANTINE_SCHEMA)
        || (in_quarantine && matches!(item.kind.as_str(), "table" | "table column" | "index"))
}

/// One step of removing the extras: the statement, and what it removes (for the report;
/// `None` for the bookkeeping statements around them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remedy {
    pub removes: Option<String>,
    pub sql: String,
}

/// The statements that remove the extras (tables are quarantined instead, keeping their
/// rows), in an order where nothing depends on something already gone: code that runs on
/// its own first (triggers, rules, policies), then what hangs off reference tables, then
/// free-standing objects, then tables, then schemas. Parts of an extra table (its columns,
/// constraints, defaults) and of views go with them and get no statement of their own.
pub fn remedies(extra: &[Item]) -> Vec<Remedy> {
    let extra_tables: Vec<&[String]> = extra
        .iter()
        .filter(|i| i.kind == "table")
        .map(|i| i.names.as_slice())
        .collect();
    let on_extra_table = |i: &Item| {
        i.names.len() > 2
            && extra_tables
                .iter()
                .any(|t| t.len() == 2 && t[..] == i.names[..2])
    };
    let mut ordered: Vec<(u8, Option<String>, String)> = Vec::new();
    ordered.push((
        0,
        None,
        format!("CREATE SCHEMA IF NOT EXISTS {QUARANTINE_SCHEMA}"),
    ));
    for item in extra {
        let q = |n: usize| {
            item.names
                .get(n)
                .map(|s| quote_ident(s))
                .unwrap_or_default()
        };
        let (rank, sql) = match item.kind.as_str() {
            "trigger" | "rule" | "policy" => (
                1,
                format!("DROP {} {}", item.kind.to_uppercase(), item.identity),
            ),
            _ if on_extra_table(item) => continue,
            "table constraint" => (
                2,
                format!(
                    "ALTER TABLE {}.{} DROP CONSTRAINT {} CASCADE",
                    q(0),
                    q(1),
                    q(2)
                ),
            ),
            "default value" => (
                2,
                format!(
                    "ALTER TABLE {}.{} ALTER COLUMN {} DROP DEFAULT",
                    q(0),
                    q(1),
                    q(2)
                ),
            ),
            // A view's (or materialized view's, ...) columns go with it.
            kind if kind.ends_with(" column") && kind != "table column" => continue,
            "table column" => (
                2,
                format!("ALTER TABLE {}.{} DROP COLUMN {} CASCADE", q(0), q(1), q(2)),
            ),
            "index" => (2, format!("DROP INDEX {} CASCADE", item.identity)),
            "table" => (
                4,
                format!(
                    "ALTER TABLE {} SET SCHEMA {QUARANTINE_SCHEMA}",
                    item.identity
                ),
            ),
            "schema" => (5, format!("DROP SCHEMA {} CASCADE", item.identity)),
            "function" | "procedure" | "aggregate" => {
                (3, format!("DROP ROUTINE {} CASCADE", item.identity))
            }
            "composite type" => (3, format!("DROP TYPE {} CASCADE", item.identity)),
            kind => (
                3,
                format!("DROP {} {} CASCADE", kind.to_uppercase(), item.identity),
            ),
        };
        let removes = match item.kind.as_str() {
            "table" => format!("quarantined table {}", item.identity),
            _ => format!("removed {}", item.describe()),
        };
        ordered.push((rank, Some(removes), sql));
    }
    ordered.sort_by_key(|(rank, _, _)| *rank);
    let mut out: Vec<Remedy> = ordered
        .into_iter()
        .map(|(_, removes, sql)| Remedy { removes, sql })
        .collect();
    out.push(Remedy {
        removes: None,
        sql: format!(
            "REVOKE ALL ON SCHEMA {QUARANTINE_SCHEMA} FROM PUBLIC; \
             REVOKE ALL ON ALL TABLES IN SCHEMA {QUARANTINE_SCHEMA} FROM PUBLIC"
        ),
    });
    out
}

/// Every user-defined object (OID past the bootstrap range) with its kind, name parts,
/// identity and a hash of its definition. Row types, array types and multirange types are
/// left out (they come and go with their relation or base type), so are internal triggers
/// (foreign keys' triggers carry OIDs in their names) and TOAST and temporary schemas.
const INVENTORY_SQL: &str = r#"
WITH objs(cls, oid, sub, def, note) AS (
  SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, c.oid, 0,
         CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid)
              WHEN c.relkind IN ('i', 'I') THEN pg_catalog.pg_get_indexdef(c.oid) END, NULL
    FROM pg_catalog.pg_class c WHERE c.oid >= 16384
  UNION ALL SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, a.attrelid, a.attnum::int,
         pg_catalog.format_type(a.atttypid, a.atttypmod) || a.attgenerated::text, NULL
    FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
   WHERE a.attrelid >= 16384 AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  UNION ALL SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass, p.oid, 0,
         p.prokind::text || p.prosecdef::text || coalesce(p.proconfig::text, '') || p.prosrc || coalesce(p.probin, ''), NULL
    FROM pg_catalog.pg_proc p WHERE p.oid >= 16384
  UNION ALL SELECT 'pg_catalog.pg_type'::pg_catalog.regclass, t.oid, 0, t.typtype::text,
         CASE t.typtype WHEN 'd' THEN 'domain' END
    FROM pg_catalog.pg_type t
   WHERE t.oid >= 16384 AND t.typrelid = 0 AND t.typtype <> 'm'
     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type e WHERE e.typarray = t.oid)
  UNION ALL SELECT 'pg_catalog.pg_namespace'::pg_catalog.regclass, oid, 0, NULL, NULL FROM pg_catalog.pg_namespace WHERE oid >= 16384
  UNION ALL SELECT 'pg_catalog.pg_trigger'::pg_catalog.regclass, oid, 0, pg_catalog.pg_get_triggerdef(oid), NULL
    FROM pg_catalog.pg_trigger WHERE oid >= 16384 AND NOT tgisinternal
  UNION ALL SELECT 'pg_catalog.pg_rewrite'::pg_catalog.regclass, oid, 0, pg_catalog.pg_get_ruledef(oid), NULL
    FROM pg_catalog.pg_rewrite WHERE oid >= 16384 AND rulename <> '_RETURN'
  UNION ALL SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass, oid, 0, pg_catalog.pg_get_constraintdef(oid), NULL
    FROM pg_catalog.pg_constraint WHERE oid >= 16384
  UNION ALL SELECT 'pg_catalog.pg_attrdef'::pg_catalog.regclass, oid, 0, pg_catalog.pg_get_expr(adbin, adrelid), NULL
    FROM pg_catalog.pg_attrdef WHERE oid >= 16384
  UNION ALL SELECT 'pg_catalog.pg_policy'::pg_catalog.regclass, oid, 0,
         polcmd::text || polpermissive::text || coalesce(pg_catalog.pg_get_expr(polqual, polrelid), '')
           || coalesce(pg_catalog.pg_get_expr(polwithcheck, polrelid), ''), NULL
    FROM pg_catalog.pg_policy WHERE oid >= 16384
  UNION ALL SELECT 'pg_catalog.pg_operator'::pg_catalog.regclass, oid, 0, NULL, NULL FROM pg_catalog.pg_operator WHERE oid >= 16384
  UNION ALL SELECT 'pg_catalog.pg_cast'::pg_catalog.regclass, oid, 0, NULL, NULL FROM pg_catalog.pg_cast WHERE oid >= 16384
  UNION ALL SELECT 'pg_catalog.pg_extension'::pg_catalog.regclass, oid, 0, NULL, NULL FROM pg_catalog.pg_extension WHERE oid >= 16384
  UNION ALL SELECT 'pg_catalog.pg_event_trigger'::pg_catalog.regclass, oid, 0, NULL, NULL FROM pg_catalog.pg_event_trigger
  UNION ALL SELECT 'pg_catalog.pg_publication'::pg_catalog.regclass, oid, 0, NULL, NULL FROM pg_catalog.pg_publication
  UNION ALL SELECT 'pg_catalog.pg_collation'::pg_catalog.regclass, oid, 0, NULL, NULL FROM pg_catalog.pg_collation WHERE oid >= 16384
  UNION ALL SELECT 'pg_catalog.pg_conversion'::pg_catalog.regclass, oid, 0, NULL, NULL FROM pg_catalog.pg_conversion WHERE oid >= 16384
  UNION ALL SELECT 'pg_catalog.pg_opclass'::pg_catalog.regclass, oid, 0, NULL, NULL FROM pg_catalog.pg_opclass WHERE oid >= 16384
  UNION ALL SELECT 'pg_catalog.pg_opfamily'::pg_catalog.regclass, oid, 0, NULL, NULL FROM pg_catalog.pg_opfamily WHERE oid >= 16384
  UNION ALL SELECT 'pg_catalog.pg_statistic_ext'::pg_catalog.regclass, oid, 0, NULL, NULL FROM pg_catalog.pg_statistic_ext WHERE oid >= 16384
  UNION ALL SELECT 'pg_catalog.pg_ts_config'::pg_catalog.regclass, oid, 0, NULL, NULL FROM pg_catalog.pg_ts_config WHERE oid >= 16384
  UNION ALL SELECT 'pg_catalog.pg_ts_dict'::pg_catalog.regclass, oid, 0, NULL, NULL FROM pg_catalog.pg_ts_dict WHERE oid >= 16384
  UNION ALL SELECT 'pg_catalog.pg_foreign_server'::pg_catalog.regclass, oid, 0, NULL, NULL FROM pg_catalog.pg_foreign_server
  UNION ALL SELECT 'pg_catalog.pg_language'::pg_catalog.regclass, oid, 0, NULL, NULL FROM pg_catalog.pg_language WHERE oid >= 16384
)
SELECT coalesce(o.note, a.type), a.object_names, i.identity, pg_catalog.md5(coalesce(o.def, ''))
  FROM objs o,
       LATERAL pg_catalog.pg_identify_object(o.cls, o.oid, o.sub) i,
       LATERAL pg_catalog.pg_identify_object_as_address(o.cls, o.oid, o.sub) a
 WHERE i.schema IS NULL
    OR NOT (i.schema = 'pg_toast' OR i.schema LIKE 'pg\_temp\_%' OR i.schema LIKE 'pg\_toast\_temp\_%')
 ORDER BY 1, 3
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn item(kind: &str, names: &[&str], identity: &str, def: &str) -> Item {
        Item {
            kind: kind.into(),
            names: names.iter().map(|s| s.to_string()).collect(),
            identity: identity.into(),
            def: def.into(),
        }
    }

    #[test]
    fn extras_and_modifications_are_told_apart() {
        let reference = vec![
            item("table", &["public", "leads"], "public.leads", "x"),
            item(
                "default value",
                &["public", "leads", "status"],
                "for public.leads.status",
                "d1",
            ),
        ];
        let tenant = vec![
            item("table", &["public", "leads"], "public.leads", "x"),
            item(
                "default value",
                &["public", "leads", "status"],
                "for public.leads.status",
                "d2",
            ),
            item("function", &["public", "f"], "public.f()", "y"),
            item("schema", &["quarantine"], "quarantine", ""),
            item("table", &["quarantine", "old"], "quarantine.old", ""),
            item("function", &["quarantine", "g"], "quarantine.g()", ""),
        ];
        let drift = compare(&tenant, &reference);
        let extra: Vec<_> = drift.extra.iter().map(Item::describe).collect();
        assert_eq!(extra, ["function public.f()", "function quarantine.g()"]);
        assert_eq!(drift.modified.len(), 1);
        assert_eq!(drift.modified[0].kind, "default value");
    }

    #[test]
    fn remedies_quarantine_tables_and_drop_code_in_a_safe_order() {
        let extra = vec![
            item("schema", &["evil"], "evil", ""),
            item("table", &["evil", "loot"], "evil.loot", ""),
            item("table column", &["evil", "loot", "x"], "evil.loot.x", ""),
            item("trigger", &["evil", "loot", "t"], "t on evil.loot", ""),
            item("function", &["public", "f"], "public.f()", ""),
            item(
                "table column",
                &["public", "leads", "pwn"],
                "public.leads.pwn",
                "",
            ),
            item("domain", &["public.d"], "public.d", ""),
        ];
        let sql: Vec<String> = remedies(&extra).into_iter().map(|r| r.sql).collect();
        let pos = |needle: &str| {
            sql.iter()
                .position(|s| s.contains(needle))
                .unwrap_or_else(|| panic!("{needle} missing from {sql:?}"))
        };
        assert!(pos("DROP TRIGGER t on evil.loot") < pos("DROP ROUTINE public.f()"));
        assert!(
            pos("DROP ROUTINE public.f()") < pos("ALTER TABLE evil.loot SET SCHEMA quarantine")
        );
        assert!(pos("SET SCHEMA quarantine") < pos("DROP SCHEMA evil CASCADE"));
        assert!(sql
            .iter()
            .any(|s| s == "ALTER TABLE \"public\".\"leads\" DROP COLUMN \"pwn\" CASCADE"));
        assert!(sql.iter().any(|s| s == "DROP DOMAIN public.d CASCADE"));
        // The extra table's own column moves with it.
        assert!(!sql.iter().any(|s| s.contains("DROP COLUMN \"x\"")));
    }
}
