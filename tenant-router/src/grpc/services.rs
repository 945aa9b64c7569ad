//! The domain services: each method is one tenant-scoped operation run through
//! [`CallContext::run`]: single statements on a shared (pipelined) connection, transactions
//! on one of their own.

use super::{CallContext, Op};
use crate::domain::{catalog, conversations, leads};
use crate::path::Permission;
use proto::domain::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

macro_rules! op {
    ($ctx:expr, $method:literal, $access:ident, $req:expr, $f:path) => {
        $ctx.run(
            $method,
            Permission::$access,
            $req,
            Op::Statements(Box::new(|c, _sector, m| Box::pin($f(c, m)))),
        )
        .await
    };
    ($ctx:expr, $method:literal, $access:ident, $req:expr, sector $f:path) => {
        $ctx.run(
            $method,
            Permission::$access,
            $req,
            Op::Statements(Box::new(|c, sector, m| Box::pin($f(c, sector, m)))),
        )
        .await
    };
    ($ctx:expr, $method:literal, $access:ident, $req:expr, transaction sector $f:path) => {
        $ctx.run(
            $method,
            Permission::$access,
            $req,
            Op::Transaction(Box::new(|c, sector, m| Box::pin($f(c, sector, m)))),
        )
        .await
    };
}

/// `tenancy.domain.v1.Leads`.
pub struct LeadsService(pub Arc<CallContext>);
/// `tenancy.domain.v1.Conversations`.
pub struct ConversationsService(pub Arc<CallContext>);
/// `tenancy.domain.v1.Catalog`.
pub struct CatalogService(pub Arc<CallContext>);

#[tonic::async_trait]
impl pb::leads_server::Leads for LeadsService {
    async fn upsert_lead(
        &self,
        r: Request<pb::UpsertLeadRequest>,
    ) -> Result<Response<pb::Lead>, Status> {
        op!(self.0, "UpsertLead", Write, r, leads::upsert)
    }
    async fn get_lead(&self, r: Request<pb::GetLeadRequest>) -> Result<Response<pb::Lead>, Status> {
        op!(self.0, "GetLead", Read, r, leads::get)
    }
    async fn list_leads(
        &self,
        r: Request<pb::ListLeadsRequest>,
    ) -> Result<Response<pb::ListLeadsResponse>, Status> {
        op!(self.0, "ListLeads", Read, r, leads::list)
    }
    async fn update_lead_status(
        &self,
        r: Request<pb::UpdateLeadStatusRequest>,
    ) -> Result<Response<pb::Lead>, Status> {
        op!(self.0, "UpdateLeadStatus", Write, r, leads::update_status)
    }
}

#[tonic::async_trait]
impl pb::conversations_server::Conversations for ConversationsService {
    async fn open_conversation(
        &self,
        r: Request<pb::OpenConversationRequest>,
    ) -> Result<Response<pb::Conversation>, Status> {
        op!(self.0, "OpenConversation", Write, r, conversations::open)
    }
    async fn list_conversations(
        &self,
        r: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<pb::ListConversationsResponse>, Status> {
        op!(self.0, "ListConversations", Read, r, conversations::list)
    }
    async fn append_message(
        &self,
        r: Request<pb::AppendMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        op!(self.0, "AppendMessage", Write, r, conversations::append)
    }
    async fn list_messages(
        &self,
        r: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        op!(
            self.0,
            "ListMessages",
            Read,
            r,
            conversations::list_messages
        )
    }
    async fn mark_read(
        &self,
        r: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::Conversation>, Status> {
        op!(self.0, "MarkRead", Write, r, conversations::mark_read)
    }
}

#[tonic::async_trait]
impl pb::catalog_server::Catalog for CatalogService {
    async fn search_items(
        &self,
        r: Request<pb::SearchItemsRequest>,
    ) -> Result<Response<pb::SearchItemsResponse>, Status> {
        op!(self.0, "SearchItems", Read, r, sector catalog::search)
    }
    async fn get_item(
        &self,
        r: Request<pb::GetItemRequest>,
    ) -> Result<Response<pb::CatalogItem>, Status> {
        op!(self.0, "GetItem", Read, r, sector catalog::get)
    }
    async fn upsert_item(
        &self,
        r: Request<pb::UpsertItemRequest>,
    ) -> Result<Response<pb::CatalogItem>, Status> {
        op!(self.0, "UpsertItem", WriteCatalog, r, transaction sector catalog::upsert)
    }
}
