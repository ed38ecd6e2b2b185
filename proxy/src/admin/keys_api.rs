//! Key operations on a running gateway: `POST /v1/keys/shred?subject=ID`
//! destroys a data subject's keys (crypto-shredding) and `GET
//! /v1/keys/report` lists the stored subject keys and stored data keys by
//! KEK version.
//!
//! They live here because a running Custos holds a sled subject key store
//! locked, and because shredding must take effect in the running process at
//! once (its key cache forgets the subject; with the shared topic store,
//! every gateway's cache does, as each applies the shredding). The bearer token is checked by
//! the `/v1/` dispatcher before these run. Every shredding is recorded in the
//! audit log under the subject's keyed-hash token, never the raw id.

use std::net::SocketAddr;

use custos_audit::EventKind;
use hyper::{Method, Request, StatusCode};
use serde_json::json;

use super::audit_api::{error, json_response, percent_decode, Resp, API_PRINCIPAL};
use super::AdminState;

/// Answers a `/v1/keys/...` request (already authenticated).
pub async fn handle<B>(req: &Request<B>, state: &AdminState, peer: SocketAddr) -> Resp {
    let path = req.uri().path();
    let Some(p) = state.protection.as_ref() else {
        return error(
            StatusCode::NOT_FOUND,
            "no field encryption is configured (the `encryption` section)",
        );
    };
    let Some(store) = p.subjects.as_ref() else {
        return error(
            StatusCode::NOT_FOUND,
            "no subject key store is configured (encryption.subject_keys)",
        );
    };
    match (req.method(), path) {
        (&Method::POST, "/v1/keys/shred") => {
            let subject = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("subject="))
                .map(percent_decode);
            let subject = match subject {
                Some(Ok(s)) if !s.is_empty() => s,
                Some(Err(why)) => return error(StatusCode::BAD_REQUEST, why),
                _ => return error(StatusCode::BAD_REQUEST, "give ?subject=ID"),
            };
            match store.shred(subject.as_bytes()).await {
                Ok(r) => {
                    let record = state
                        .auditor
                        .record(EventKind::KeyShredding)
                        .with_principal(API_PRINCIPAL, "token")
                        .with_client(peer.to_string(), None)
                        .with_detail("subject_token", r.token_hex.clone())
                        .with_detail("versions_destroyed", format!("{:?}", r.versions_destroyed));
                    // Durable before the answer: an erasure must be provable.
                    if let Err(e) = state.auditor.submit(vec![record]).await {
                        tracing::error!(error = %e, "shredding done but its audit record failed");
                    }
                    tracing::info!(subject_token = %r.token_hex, "subject keys shredded");
                    json_response(
                        StatusCode::OK,
                        &json!({
                            "shredded": true,
                            "subject_token": r.token_hex,
                            "versions_destroyed": r.versions_destroyed,
                            "shredded_at": r.shredded_at,
                        }),
                    )
                }
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        (&Method::GET, "/v1/keys/report") => {
            let rows = |r: Vec<(String, u32, u64)>| {
                r.iter()
                    .map(|(kek, v, n)| json!({"kek": kek, "version": v, "count": n}))
                    .collect::<Vec<_>>()
            };
            match (store.report().await, store.dek_report().await) {
                (Ok(subjects), Ok(deks)) => json_response(
                    StatusCode::OK,
                    &json!({"subject_keys": rows(subjects), "stored_deks": rows(deks)}),
                ),
                (Err(e), _) | (_, Err(e)) => {
                    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                }
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {} {path}", req.method()),
        ),
    }
}
