//! Webhook helpers shared by the webhook and pipeline tests: signing, raw HTTP, Meta
//! deliveries.
#![allow(clippy::unwrap_used, dead_code)]

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

pub const APP_SECRET: &str = "test-app-secret-0123456789";
pub const VERIFY_TOKEN: &str = "verify-me-please";

/// The router settings that turn the webhook endpoints on.
pub const ENV: [(&str, &str); 3] = [
    ("TENANT_ROUTER__WEBHOOK__APP_SECRET", APP_SECRET),
    ("TENANT_ROUTER__WEBHOOK__VERIFY_TOKEN", VERIFY_TOKEN),
    ("TENANT_ROUTER__WEBHOOK__BODY_LIMIT_BYTES", "262144"),
];

pub fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Sends one HTTP/1.1 request; returns (status, body).
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A router that is down answers nothing: status 0.
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let _ = s.write_all(body).await;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

/// Posts a correctly signed Meta delivery to the router's HTTP address; the status.
pub async fn post_signed(addr: &str, body: &[u8]) -> u16 {
    http(
        addr,
        "POST",
        "/webhooks/whatsapp",
        &[("X-Hub-Signature-256", sign(body))],
        body,
    )
    .await
    .0
}

pub fn delivery(
    phone_number_id: &str,
    messages: serde_json::Value,
    statuses: serde_json::Value,
) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "5511900000000", "phone_number_id": phone_number_id},
            "contacts": [{"wa_id": "551187654321", "profile": {"name": "Ana Souza"}}],
            "messages": messages,
            "statuses": statuses,
        }}]}]
    }))
    .unwrap()
}

pub fn text_msg(wamid: &str, from: &str, body: &str) -> serde_json::Value {
    json!({"from": from, "id": wamid, "timestamp": "1763800000", "type": "text", "text": {"body": body}})
}
