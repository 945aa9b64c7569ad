//! The measured operations, issued three ways: direct to PostgreSQL (prepared statements on
//! one connection per caller: the floor), through PgBouncer in transaction mode (one-round-trip
//! unnamed statements, as its users must), and through the router's gRPC domain API.

use anyhow::{anyhow, Result};
use proto::domain::v1 as dm;
use tokio_postgres::types::Type;

/// Which operation a call is.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    GetLead,
    AppendMessage,
    ListMessages,
}

pub const GET_LEAD: &str = "SELECT id, wa_id, coalesce(nome, ''), status FROM leads WHERE id = $1";
/// The router's AppendMessage statement.
pub const APPEND: &str = "WITH m AS (INSERT INTO mensagens (conversa_id, wamid, direcao, tipo, conteudo, status) \
     VALUES ($1, NULL, 'saida', 'text', $2, 'pendente') RETURNING *), \
     c AS (UPDATE conversas SET ultima_mensagem_em = now() WHERE id = $1 AND EXISTS (SELECT 1 FROM m)) \
     SELECT id FROM m";
pub const LIST: &str = "SELECT id, conversa_id, coalesce(wamid, ''), direcao, tipo, coalesce(conteudo, ''), status, \
     (extract(epoch FROM enviada_em) * 1000)::int8 FROM mensagens WHERE conversa_id = $1 AND id > $2 ORDER BY id LIMIT $3";

/// One tenant's fixture: leads with a conversation of 25 messages each; a caller works on
/// the first conversation of its copy.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub slug: String,
    pub lead: i64,
    pub conversations: Vec<i64>,
}

impl Fixture {
    fn conversation(&self) -> i64 {
        self.conversations.first().copied().unwrap_or(0)
    }
}

/// A caller bound to one way of reaching the database.
pub enum Caller {
    Direct {
        client: tokio_postgres::Client,
        stmts: [tokio_postgres::Statement; 3],
    },
    Bouncer {
        client: tokio_postgres::Client,
    },
    Router {
        leads: proto::domain::v1::leads_client::LeadsClient<tonic::transport::Channel>,
        conv:
            proto::domain::v1::conversations_client::ConversationsClient<tonic::transport::Channel>,
        token: String,
    },
}

pub async fn connect(cfg: &tokio_postgres::Config) -> Result<tokio_postgres::Client> {
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

impl Caller {
    pub async fn direct(cfg: &tokio_postgres::Config) -> Result<Caller> {
        let client = connect(cfg).await?;
        let stmts = [
            client.prepare(GET_LEAD).await?,
            client.prepare(APPEND).await?,
            client.prepare(LIST).await?,
        ];
        Ok(Caller::Direct { client, stmts })
    }

    pub async fn call(&mut self, op: Op, f: &Fixture) -> Result<()> {
        match self {
            Caller::Direct { client, stmts } => match op {
                Op::GetLead => {
                    client.query_one(&stmts[0], &[&f.lead]).await?;
                }
                Op::AppendMessage => {
                    client
                        .query_one(&stmts[1], &[&f.conversation(), &"mensagem de carga"])
                        .await?;
                }
                Op::ListMessages => {
                    let rows = client
                        .query(&stmts[2], &[&f.conversation(), &0i64, &21i64])
                        .await?;
                    ensure_rows(rows.len())?;
                }
            },
            Caller::Bouncer { client } => match op {
                Op::GetLead => {
                    client
                        .query_typed(GET_LEAD, &[(&f.lead, Type::INT8)])
                        .await?;
                }
                Op::AppendMessage => {
                    client
                        .query_typed(
                            APPEND,
                            &[
                                (&f.conversation(), Type::INT8),
                                (&"mensagem de carga", Type::TEXT),
                            ],
                        )
                        .await?;
                }
                Op::ListMessages => {
                    let rows = client
                        .query_typed(
                            LIST,
                            &[
                                (&f.conversation(), Type::INT8),
                                (&0i64, Type::INT8),
                                (&21i64, Type::INT8),
                            ],
                        )
                        .await?;
                    ensure_rows(rows.len())?;
                }
            },
            Caller::Router { leads, conv, token } => {
                let mut meta = tonic::metadata::MetadataMap::new();
                if let (Ok(t), Ok(a)) = (f.slug.parse(), format!("Bearer {token}").parse()) {
                    meta.insert("x-tenant", t);
                    meta.insert("authorization", a);
                }
                fn with<T>(m: T, meta: &tonic::metadata::MetadataMap) -> tonic::Request<T> {
                    let mut r = tonic::Request::new(m);
                    *r.metadata_mut() = meta.clone();
                    r
                }
                match op {
                    Op::GetLead => {
                        let m = dm::GetLeadRequest {
                            key: Some(dm::get_lead_request::Key::Id(f.lead)),
                        };
                        leads.get_lead(with(m, &meta)).await?;
                    }
                    Op::AppendMessage => {
                        let m = dm::AppendMessageRequest {
                            conversation_id: f.conversation(),
                            direction: "saida".into(),
                            body: "mensagem de carga".into(),
                            ..Default::default()
                        };
                        conv.append_message(with(m, &meta)).await?;
                    }
                    Op::ListMessages => {
                        let m = dm::ListMessagesRequest {
                            conversation_id: f.conversation(),
                            page_size: 20,
                            page_token: String::new(),
                        };
                        let rows = conv
                            .list_messages(with(m, &meta))
                            .await?
                            .into_inner()
                            .messages
                            .len();
                        ensure_rows(rows)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn ensure_rows(n: usize) -> Result<()> {
    if n >= 20 {
        Ok(())
    } else {
        Err(anyhow!("list returned {n} rows"))
    }
}
