//! Values stored in tenant databases that callers read and set: the spellings are the
//! tenant schema's (its CHECK constraints), the proto enums mirror them.

use crate::spelled;

spelled!(
    /// The business sector of a tenant; it decides which sector tables its database gets.
    Sector, "sector" {
        Veiculos = "veiculos",
        Imoveis = "imoveis",
        Autopecas = "autopecas",
        Varejo = "varejo",
        Servicos = "servicos",
    }
);

spelled!(
    /// Where a lead is in the sales funnel.
    LeadStatus, "lead status" {
        Novo = "novo",
        EmAtendimento = "em_atendimento",
        Qualificado = "qualificado",
        Convertido = "convertido",
        Perdido = "perdido",
    }
);

spelled!(
    /// Whether a conversation is open (at most one per lead) or closed.
    ConversationStatus, "conversation status" {
        Aberta = "aberta",
        Fechada = "fechada",
    }
);

spelled!(
    /// Who sent a message: the lead (inbound) or the business (outbound).
    MessageDirection, "direction" {
        Entrada = "entrada",
        Saida = "saida",
    }
);

spelled!(
    /// A message's delivery state: `recebida` for inbound messages; outbound ones move
    /// `pendente` -> `sent` -> `delivered` -> `read`, or end `failed`.
    MessageStatus, "message status" {
        Recebida = "recebida",
        Pendente = "pendente",
        Sent = "sent",
        Delivered = "delivered",
        Read = "read",
        Failed = "failed",
    }
);

spelled!(
    /// Where a backup attempt stands.
    BackupState, "backup state" {
        /// Its object is being written.
        Running = "running",
        /// Complete: the object is whole and its checksum recorded.
        Ok = "ok",
        Failed = "failed",
        /// The replica taking it stopped; no object was completed.
        Abandoned = "abandoned",
    }
);

spelled!(
    /// What a fleet run did to one tenant.
    MigrationOutcome, "migration outcome" {
        Migrated = "migrated",
        /// A legacy tenant brought to the isolation role model (`harden`).
        Upgraded = "upgraded",
        /// Already current: nothing to do.
        Skipped = "skipped",
        Failed = "failed",
        /// Another run held the tenant's migration lock.
        Busy = "busy",
        /// The run stopped (canary failure, shutdown) before reaching it.
        NotStarted = "not_started",
    }
);

spelled!(
    /// What an event of the message pipeline says (the tenant outbox's `tipo`).
    EventKind, "event kind" {
        MessageReceived = "message.received",
        MessageSent = "message.sent",
        MessageStatus = "message.status",
        LeadCreated = "lead.created",
    }
);
