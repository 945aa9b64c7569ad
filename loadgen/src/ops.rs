//! The measured operations, issued three ways: direct to PostgreSQL (prepared statements,
//! connections kept per tenant with no limit: the floor), through PgBouncer in transaction
//! mode (one-round-trip unnamed statements, as its users must), and through the router's gRPC
//! domain API.

use anyhow::{anyhow, Context, Result};
use proto::control::v1::Route;
use proto::domain::v1 as dm;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio_postgres::types::Type;

/// Which operation a call is.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    GetLead,
    AppendMessage,
    ListMessages,
}

impl Op {
    /// The mix: the three in equal parts, caller `k`'s `n`th call.
    pub fn nth(n: usize) -> Op {
        [Op::GetLead, Op::AppendMessage, Op::ListMessages][n % 3]
    }
}

pub const GET_LEAD: &str = "SELECT id, wa_id, coalesce(nome, ''), status FROM leads WHERE id = $1";
/// The router's AppendMessage statement.
pub const APPEND: &str = "WITH m AS (INSERT INTO mensagens (conversa_id, wamid, direcao, tipo, conteudo, status) \
     VALUES ($1, NULL, 'saida', 'text', $2, 'pendente') RETURNING *), \
     c AS (UPDATE conversas SET ultima_mensagem_em = now() WHERE id = $1 AND EXISTS (SELECT 1 FROM m)) \
     SELECT id FROM m";
pub const LIST: &str = "SELECT id, conversa_id, coalesce(wamid, ''), direcao, tipo, coalesce(conteudo, ''), status, \
     (extract(epoch FROM enviada_em) * 1000)::int8 FROM mensagens WHERE conversa_id = $1 AND id > $2 ORDER BY id LIMIT $3";

/// The text every AppendMessage writes.
pub const APPEND_TEXT: &str = "mensagem de carga";
/// ListMessages reads from the start of the conversation, this many rows.
pub const LIST_LIMIT: i64 = 21;

/// One tenant's data: leads with a conversation of 25 messages each.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub index: usize,
    pub slug: String,
    pub lead: i64,
    pub conversations: Vec<i64>,
}

/// Connection settings for a tenant's database (its own role and password), at `port`.
pub fn pg_config(route: &Route, port: u16, app: &str) -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(port)
        .user(&route.role)
        .password(&route.password)
        .dbname(&route.database)
        .application_name(app);
    cfg
}

pub async fn connect(cfg: &tokio_postgres::Config) -> Result<tokio_postgres::Client> {
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Writes `leads` leads, each with a conversation of 25 messages, into the tenant's
/// database (as the tenant), in one statement.
pub async fn seed(index: usize, route: &Route, leads: i64) -> Result<Fixture> {
    let port = u16::try_from(route.port)?;
    let c = connect(&pg_config(route, port, "loadgen-seed"))
        .await
        .with_context(|| format!("seeding {}", route.slug))?;
    let rows = c
        .query(
            "WITH l AS (INSERT INTO leads (wa_id, nome) \
                 SELECT '55119' || lpad(g::text, 8, '0'), 'Carga' FROM generate_series(1, $1::int8) g RETURNING id), \
             c AS (INSERT INTO conversas (lead_id) SELECT id FROM l RETURNING id, lead_id), \
             m AS (INSERT INTO mensagens (conversa_id, direcao, conteudo) \
                 SELECT c.id, 'entrada', 'msg ' || g FROM c, generate_series(1, 25) g) \
             SELECT lead_id, id FROM c ORDER BY id",
            &[&leads],
        )
        .await?;
    Ok(Fixture {
        index,
        slug: route.slug.clone(),
        lead: rows.first().map(|r| r.get(0)).context("no lead")?,
        conversations: rows.iter().map(|r| r.get(1)).collect(),
    })
}

/// Deletes every row of the tenant's event outbox (as the superuser: `TRUNCATE`).
pub async fn empty_outbox(route: &Route) -> Result<()> {
    let port = u16::try_from(route.port)?;
    let mut cfg = pg_config(route, port, "loadgen-outbox");
    cfg.user(pg_harness::SUPERUSER)
        .password(pg_harness::SUPERUSER_PASSWORD);
    let c = connect(&cfg)
        .await
        .with_context(|| format!("emptying the outbox of {}", route.slug))?;
    c.batch_execute("TRUNCATE eventos_saida").await?;
    Ok(())
}

struct PgClient {
    client: tokio_postgres::Client,
    /// Prepared once per connection (direct mode only).
    stmts: Option<[tokio_postgres::Statement; 3]>,
}

/// Client connections kept per tenant, opened on demand and never limited.
pub struct ConnPool {
    configs: Vec<tokio_postgres::Config>,
    prepared: bool,
    idle: Mutex<HashMap<usize, Vec<PgClient>>>,
}

impl ConnPool {
    /// Connections to each route's database at `port` (the server's own, or PgBouncer's);
    /// `prepared`: prepare statements (PgBouncer in transaction mode cannot keep them).
    pub fn new(routes: &[Route], port: Option<u16>, prepared: bool, app: &str) -> Result<ConnPool> {
        let configs = routes
            .iter()
            .map(|r| Ok(pg_config(r, port.unwrap_or(u16::try_from(r.port)?), app)))
            .collect::<Result<_>>()?;
        Ok(ConnPool {
            configs,
            prepared,
            idle: Mutex::new(HashMap::new()),
        })
    }

    async fn take(&self, tenant: usize) -> Result<PgClient> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&tenant)
            .and_then(Vec::pop);
        if let Some(c) = idle {
            return Ok(c);
        }
        let cfg = self.configs.get(tenant).context("no such tenant")?;
        let client = connect(cfg).await?;
        let stmts = if self.prepared {
            Some([
                client.prepare(GET_LEAD).await?,
                client.prepare(APPEND).await?,
                client.prepare(LIST).await?,
            ])
        } else {
            None
        };
        Ok(PgClient { client, stmts })
    }

    fn give_back(&self, tenant: usize, c: PgClient) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(tenant)
            .or_default()
            .push(c);
    }

    async fn call(&self, op: Op, f: &Fixture, conversation: i64) -> Result<()> {
        let c = self.take(f.index).await?;
        let result = pg_call(&c, op, f.lead, conversation).await;
        if result.is_ok() {
            self.give_back(f.index, c);
        }
        result
    }
}

async fn pg_call(c: &PgClient, op: Op, lead: i64, conversation: i64) -> Result<()> {
    let client = &c.client;
    match (op, &c.stmts) {
        (Op::GetLead, Some(s)) => {
            client.query_one(&s[0], &[&lead]).await?;
        }
        (Op::AppendMessage, Some(s)) => {
            client
                .query_one(&s[1], &[&conversation, &APPEND_TEXT])
                .await?;
        }
        (Op::ListMessages, Some(s)) => {
            ensure_rows(
                client
                    .query(&s[2], &[&conversation, &0i64, &LIST_LIMIT])
                    .await?
                    .len(),
            )?;
        }
        (Op::GetLead, None) => {
            one_row(client.query_typed(GET_LEAD, &[(&lead, Type::INT8)]).await?)?;
        }
        (Op::AppendMessage, None) => {
            one_row(
                client
                    .query_typed(
                        APPEND,
                        &[(&conversation, Type::INT8), (&APPEND_TEXT, Type::TEXT)],
                    )
                    .await?,
            )?;
        }
        (Op::ListMessages, None) => {
            let rows = client
                .query_typed(
                    LIST,
                    &[
                        (&conversation, Type::INT8),
                        (&0i64, Type::INT8),
                        (&LIST_LIMIT, Type::INT8),
                    ],
                )
                .await?;
            ensure_rows(rows.len())?;
        }
    }
    Ok(())
}

type LeadsClient = dm::leads_client::LeadsClient<tonic::transport::Channel>;
type ConvClient = dm::conversations_client::ConversationsClient<tonic::transport::Channel>;

/// gRPC clients of the router, one HTTP/2 connection per eight callers.
pub struct RouterClients {
    clients: Vec<(LeadsClient, ConvClient)>,
    authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl RouterClients {
    pub async fn new(router: &crate::stack::Router, callers: usize, token: &str) -> Result<Self> {
        let mut clients = Vec::new();
        for _ in 0..callers.div_ceil(8).max(1) {
            let ch = router.channel().await?;
            clients.push((LeadsClient::new(ch.clone()), ConvClient::new(ch)));
        }
        Ok(RouterClients {
            clients,
            authorization: format!("Bearer {token}").parse()?,
        })
    }

    fn request<T>(&self, m: T, tenant: &str) -> Result<tonic::Request<T>> {
        let mut r = tonic::Request::new(m);
        r.metadata_mut().insert("x-tenant", tenant.parse()?);
        r.metadata_mut()
            .insert("authorization", self.authorization.clone());
        Ok(r)
    }

    /// A GetLead for `tenant` (slug or id); the status code it ends with.
    pub async fn get_lead_code(&self, caller: usize, tenant: &str) -> Result<tonic::Code> {
        let mut leads = self.clients[caller % self.clients.len()].0.clone();
        let m = dm::GetLeadRequest {
            key: Some(dm::get_lead_request::Key::Id(1)),
        };
        Ok(match leads.get_lead(self.request(m, tenant)?).await {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        })
    }

    /// `op` for the tenant named `tenant` (slug or id), on caller `caller`'s connection.
    pub async fn call(
        &self,
        caller: usize,
        op: Op,
        tenant: &str,
        lead: i64,
        conversation: i64,
    ) -> Result<()> {
        let (leads, conv) = &self.clients[caller % self.clients.len()];
        let (mut leads, mut conv) = (leads.clone(), conv.clone());
        match op {
            Op::GetLead => {
                let m = dm::GetLeadRequest {
                    key: Some(dm::get_lead_request::Key::Id(lead)),
                };
                leads.get_lead(self.request(m, tenant)?).await?;
            }
            Op::AppendMessage => {
                let m = dm::AppendMessageRequest {
                    conversation_id: conversation,
                    direction: proto::domain::v1::MessageDirection::Saida as i32,
                    body: APPEND_TEXT.into(),
                    ..Default::default()
                };
                conv.append_message(self.request(m, tenant)?).await?;
            }
            Op::ListMessages => {
                let m = dm::ListMessagesRequest {
                    conversation_id: conversation,
                    page_size: 20,
                    page_token: String::new(),
                };
                let rows = conv
                    .list_messages(self.request(m, tenant)?)
                    .await?
                    .into_inner()
                    .messages
                    .len();
                ensure_rows(rows)?;
            }
        }
        Ok(())
    }
}

/// One way of reaching the tenants' databases.
pub enum Target {
    Direct(ConnPool),
    Bouncer(ConnPool),
    Router(RouterClients),
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Target::Direct(_) => "direct",
            Target::Bouncer(_) => "pgbouncer",
            Target::Router(_) => "router",
        }
    }

    /// Caller `caller` runs `op` on conversation `conversation` of tenant `f`.
    pub async fn call(&self, caller: usize, op: Op, f: &Fixture, conversation: i64) -> Result<()> {
        match self {
            Target::Direct(p) | Target::Bouncer(p) => p.call(op, f, conversation).await,
            Target::Router(r) => r.call(caller, op, &f.slug, f.lead, conversation).await,
        }
    }
}

fn ensure_rows(n: usize) -> Result<()> {
    if n >= 20 {
        Ok(())
    } else {
        Err(anyhow!("list returned {n} rows"))
    }
}

fn one_row(rows: Vec<tokio_postgres::Row>) -> Result<()> {
    if rows.len() == 1 {
        Ok(())
    } else {
        Err(anyhow!("expected one row, got {}", rows.len()))
    }
}
