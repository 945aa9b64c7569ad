//! Catalog items with the tenant sector's own attributes (vehicles, properties, products).

use super::{after_id, next_token, page_size, text};
use crate::error::RouterError;
use crate::pools::{Db, PgConn};
use proto::domain::v1 as pb;
use tenant_model::Sector;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

/// Which attribute table a sector's items carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attributes {
    Vehicle,
    Property,
    Product,
    None,
}

impl Attributes {
    /// The attribute kind of a sector.
    pub fn of_sector(sector: Sector) -> Attributes {
        match sector {
            Sector::Veiculos => Attributes::Vehicle,
            Sector::Imoveis => Attributes::Property,
            Sector::Autopecas | Sector::Varejo => Attributes::Product,
            Sector::Servicos => Attributes::None,
        }
    }
}

macro_rules! select_items {
    ($extra:literal, $join:literal, $where:literal) => {
        concat!(
            "SELECT p.id, p.sku, p.nome, coalesce(p.descricao, ''), coalesce(p.preco_centavos, 0), p.moeda, p.ativo",
            $extra,
            " FROM produtos_catalogo p ",
            $join,
            " WHERE ",
            $where
        )
    };
}

macro_rules! per_sector {
    ($where:literal) => {
        [
            select_items!(
                ", v.id IS NOT NULL, coalesce(v.marca, ''), coalesce(v.modelo, ''), coalesce(v.versao, ''), \
                 coalesce(v.ano_fabricacao, 0), coalesce(v.ano_modelo, 0), coalesce(v.quilometragem, 0), \
                 coalesce(v.combustivel, ''), coalesce(v.cambio, ''), coalesce(v.cor, '')",
                "LEFT JOIN veiculos v ON v.produto_id = p.id",
                $where
            ),
            select_items!(
                ", i.id IS NOT NULL, coalesce(i.tipo, ''), coalesce(i.finalidade, ''), coalesce(i.quartos, 0), \
                 coalesce(i.banheiros, 0), coalesce(i.vagas, 0), coalesce(i.area_m2, 0)::float8, \
                 coalesce(i.bairro, ''), coalesce(i.cidade, ''), coalesce(i.uf::text, '')",
                "LEFT JOIN imoveis i ON i.produto_id = p.id",
                $where
            ),
            select_items!(
                ", pr.id IS NOT NULL, coalesce(pr.marca, ''), coalesce(pr.codigo_fabricante, ''), \
                 coalesce(pr.unidade, ''), coalesce(pr.estoque, 0), \
                 ARRAY(SELECT jsonb_array_elements_text(coalesce(pr.compatibilidade, '[]'::jsonb)))",
                "LEFT JOIN produtos pr ON pr.produto_id = p.id",
                $where
            ),
            select_items!("", "", $where),
        ]
    };
}

const SEARCH: [&str; 4] = per_sector!(
    "($1 = '' OR p.busca @@ websearch_to_tsquery('portuguese', $1)) AND ($2::int8 = 0 OR p.preco_centavos >= $2) \
     AND ($3::int8 = 0 OR p.preco_centavos <= $3) AND ($4 OR p.ativo) AND p.id > $5 ORDER BY p.id LIMIT $6"
);
const BY_ID: [&str; 4] = per_sector!("p.id = $1");
const BY_SKU: [&str; 4] = per_sector!("p.sku = $1");

fn idx(a: Attributes) -> usize {
    match a {
        Attributes::Vehicle => 0,
        Attributes::Property => 1,
        Attributes::Product => 2,
        Attributes::None => 3,
    }
}

fn item(row: &Row, a: Attributes) -> pb::CatalogItem {
    use pb::catalog_item::Attributes as A;
    let has = a != Attributes::None && row.get::<_, bool>(7);
    let attributes = match a {
        _ if !has => None,
        Attributes::Vehicle => Some(A::Vehicle(pb::Vehicle {
            make: row.get(8),
            model: row.get(9),
            version: row.get(10),
            manufacture_year: row.get(11),
            model_year: row.get(12),
            mileage_km: row.get(13),
            fuel: row.get(14),
            transmission: row.get(15),
            color: row.get(16),
        })),
        Attributes::Property => Some(A::Property(pb::Property {
            kind: row.get(8),
            purpose: row.get(9),
            bedrooms: row.get(10),
            bathrooms: row.get(11),
            parking_spaces: row.get(12),
            area_m2: row.get(13),
            neighborhood: row.get(14),
            city: row.get(15),
            state: row.get(16),
        })),
        Attributes::Product => Some(A::Product(pb::Product {
            brand: row.get(8),
            manufacturer_code: row.get(9),
            unit: row.get(10),
            stock: row.get(11),
            compatibility: row.get(12),
        })),
        Attributes::None => None,
    };
    pb::CatalogItem {
        id: row.get(0),
        sku: row.get(1),
        name: row.get(2),
        description: row.get(3),
        price_cents: row.get(4),
        currency: row.get(5),
        active: row.get(6),
        attributes,
    }
}

fn db(e: tokio_postgres::Error) -> RouterError {
    RouterError::from_db(&e)
}

/// Full-text search with price filters, by id.
pub async fn search(
    c: &Db<'_>,
    sector: Sector,
    req: pb::SearchItemsRequest,
) -> Result<pb::SearchItemsResponse, RouterError> {
    let a = Attributes::of_sector(sector);
    let query = text(&req.query, "query", 200)?;
    if req.min_price_cents < 0 || req.max_price_cents < 0 {
        return Err(RouterError::InvalidArgument(
            "prices cannot be negative".into(),
        ));
    }
    let limit = page_size(req.page_size)?;
    let after = after_id(&req.page_token)?;
    let stmt = c.prepare(SEARCH[idx(a)]).await.map_err(db)?;
    let rows = c
        .query(
            &stmt,
            &[
                &query,
                &req.min_price_cents,
                &req.max_price_cents,
                &req.include_inactive,
                &after,
                &(limit + 1),
            ],
        )
        .await
        .map_err(db)?;
    let has_more = rows.len() as i64 > limit;
    let items: Vec<_> = rows
        .iter()
        .take(limit as usize)
        .map(|r| item(r, a))
        .collect();
    let next_page_token = next_token(has_more, items.last().map(|i| i.id));
    Ok(pb::SearchItemsResponse {
        items,
        next_page_token,
    })
}

/// One item by id or SKU.
pub async fn get(
    c: &Db<'_>,
    sector: Sector,
    req: pb::GetItemRequest,
) -> Result<pb::CatalogItem, RouterError> {
    let a = Attributes::of_sector(sector);
    let row = match req.key {
        Some(pb::get_item_request::Key::Id(i)) => {
            let i = super::id(i, "id")?;
            let stmt = c.prepare(BY_ID[idx(a)]).await.map_err(db)?;
            c.query_opt(&stmt, &[&i]).await.map_err(db)?
        }
        Some(pb::get_item_request::Key::Sku(s)) => {
            let stmt = c.prepare(BY_SKU[idx(a)]).await.map_err(db)?;
            c.query_opt(&stmt, &[&s]).await.map_err(db)?
        }
        None => return Err(RouterError::InvalidArgument("give an id or a sku".into())),
    };
    row.map(|r| item(&r, a))
        .ok_or_else(|| RouterError::NotFound("item not found".into()))
}

fn required(value: &str, field: &str, max: usize) -> Result<String, RouterError> {
    let v = text(value.trim(), field, max)?;
    if v.is_empty() {
        return Err(RouterError::InvalidArgument(format!("{field} is required")));
    }
    Ok(v)
}

fn opt(value: &str, field: &str, max: usize) -> Result<Option<String>, RouterError> {
    let v = text(value.trim(), field, max)?;
    Ok((!v.is_empty()).then_some(v))
}

fn non_negative(v: i32, field: &str) -> Result<Option<i32>, RouterError> {
    match v {
        0 => Ok(None),
        n if n < 0 => Err(RouterError::InvalidArgument(format!(
            "{field} cannot be negative"
        ))),
        n => Ok(Some(n)),
    }
}

/// Creates or updates an item (by SKU) and its sector attributes, in one transaction.
pub async fn upsert(
    c: &mut PgConn,
    sector: Sector,
    req: pb::UpsertItemRequest,
) -> Result<pb::CatalogItem, RouterError> {
    use pb::catalog_item::Attributes as A;
    let a = Attributes::of_sector(sector);
    let it = req
        .item
        .ok_or_else(|| RouterError::InvalidArgument("item is required".into()))?;
    let sku = required(&it.sku, "sku", 100)?;
    let name = required(&it.name, "name", 200)?;
    let description = opt(&it.description, "description", 10_000)?;
    if it.price_cents < 0 {
        return Err(RouterError::InvalidArgument(
            "price_cents cannot be negative".into(),
        ));
    }
    let currency = if it.currency.is_empty() {
        "BRL".to_string()
    } else {
        it.currency.clone()
    };
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(RouterError::InvalidArgument(
            "currency must be a 3-letter ISO code such as BRL".into(),
        ));
    }
    let attr_stmt: Option<(&'static str, Vec<Box<dyn ToSql + Sync + Send>>)> = match (a, it.attributes) {
        (_, None) => None,
        (Attributes::Vehicle, Some(A::Vehicle(v))) => Some((
            "INSERT INTO veiculos (produto_id, marca, modelo, versao, ano_fabricacao, ano_modelo, quilometragem, \
             combustivel, cambio, cor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (produto_id) DO UPDATE SET \
             marca = EXCLUDED.marca, modelo = EXCLUDED.modelo, versao = EXCLUDED.versao, ano_fabricacao = EXCLUDED.ano_fabricacao, \
             ano_modelo = EXCLUDED.ano_modelo, quilometragem = EXCLUDED.quilometragem, combustivel = EXCLUDED.combustivel, \
             cambio = EXCLUDED.cambio, cor = EXCLUDED.cor",
            vec![
                Box::new(required(&v.make, "vehicle.make", 100)?),
                Box::new(required(&v.model, "vehicle.model", 100)?),
                Box::new(opt(&v.version, "vehicle.version", 100)?),
                Box::new(non_negative(v.manufacture_year, "vehicle.manufacture_year")?),
                Box::new(non_negative(v.model_year, "vehicle.model_year")?),
                Box::new(non_negative(v.mileage_km, "vehicle.mileage_km")?),
                Box::new(opt(&v.fuel, "vehicle.fuel", 50)?),
                Box::new(opt(&v.transmission, "vehicle.transmission", 50)?),
                Box::new(opt(&v.color, "vehicle.color", 50)?),
            ],
        )),
        (Attributes::Property, Some(A::Property(p))) => {
            if !p.area_m2.is_finite() || p.area_m2 < 0.0 {
                return Err(RouterError::InvalidArgument("property.area_m2 must be a positive number".into()));
            }
            let area: Option<String> = (p.area_m2 > 0.0).then(|| format!("{:.2}", p.area_m2));
            Some((
                "INSERT INTO imoveis (produto_id, tipo, finalidade, quartos, banheiros, vagas, area_m2, bairro, cidade, uf) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7::text::numeric, $8, $9, $10) ON CONFLICT (produto_id) DO UPDATE SET \
                 tipo = EXCLUDED.tipo, finalidade = EXCLUDED.finalidade, quartos = EXCLUDED.quartos, \
                 banheiros = EXCLUDED.banheiros, vagas = EXCLUDED.vagas, area_m2 = EXCLUDED.area_m2, \
                 bairro = EXCLUDED.bairro, cidade = EXCLUDED.cidade, uf = EXCLUDED.uf",
                vec![
                    Box::new(required(&p.kind, "property.kind", 20)?),
                    Box::new(required(&p.purpose, "property.purpose", 20)?),
                    Box::new(non_negative(p.bedrooms, "property.bedrooms")?),
                    Box::new(non_negative(p.bathrooms, "property.bathrooms")?),
                    Box::new(non_negative(p.parking_spaces, "property.parking_spaces")?),
                    Box::new(area),
                    Box::new(opt(&p.neighborhood, "property.neighborhood", 100)?),
                    Box::new(opt(&p.city, "property.city", 100)?),
                    Box::new(opt(&p.state, "property.state", 2)?),
                ],
            ))
        }
        (Attributes::Product, Some(A::Product(p))) => {
            let compat = serde_json::to_value(&p.compatibility)
                .map_err(|_| RouterError::InvalidArgument("product.compatibility".into()))?;
            Some((
                "INSERT INTO produtos (produto_id, marca, codigo_fabricante, unidade, estoque, compatibilidade) \
                 VALUES ($1, $2, $3, coalesce($4, 'un'), coalesce($5, 0), $6) ON CONFLICT (produto_id) DO UPDATE SET \
                 marca = EXCLUDED.marca, codigo_fabricante = EXCLUDED.codigo_fabricante, unidade = EXCLUDED.unidade, \
                 estoque = EXCLUDED.estoque, compatibilidade = EXCLUDED.compatibilidade",
                vec![
                    Box::new(opt(&p.brand, "product.brand", 100)?),
                    Box::new(opt(&p.manufacturer_code, "product.manufacturer_code", 100)?),
                    Box::new(opt(&p.unit, "product.unit", 20)?),
                    Box::new(non_negative(p.stock, "product.stock")?),
                    Box::new(compat),
                ],
            ))
        }
        (_, Some(_)) => {
            return Err(RouterError::InvalidArgument(format!(
                "this tenant's sector ({sector}) does not take these item attributes"
            )))
        }
    };
    let main = c
        .prepare(
            "INSERT INTO produtos_catalogo (sku, nome, descricao, preco_centavos, moeda, ativo) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (sku) DO UPDATE SET nome = EXCLUDED.nome, descricao = EXCLUDED.descricao, \
             preco_centavos = EXCLUDED.preco_centavos, moeda = EXCLUDED.moeda, ativo = EXCLUDED.ativo, \
             atualizado_em = now() RETURNING id",
        )
        .await
        .map_err(db)?;
    let attr = match &attr_stmt {
        Some((sql, _)) => Some(c.prepare(sql).await.map_err(db)?),
        None => None,
    };
    let select = c.prepare(BY_ID[idx(a)]).await.map_err(db)?;
    let price: Option<i64> = Some(it.price_cents);
    let tx = c.client.transaction().await.map_err(db)?;
    let row = tx
        .query_one(
            &main,
            &[&sku, &name, &description, &price, &currency, &it.active],
        )
        .await
        .map_err(db)?;
    let item_id: i64 = row.get(0);
    if let (Some(stmt), Some((_, params))) = (attr, attr_stmt) {
        let mut all: Vec<&(dyn ToSql + Sync)> = vec![&item_id];
        all.extend(params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)));
        tx.execute(&stmt, &all).await.map_err(db)?;
    }
    let row = tx.query_one(&select, &[&item_id]).await.map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(item(&row, a))
}
