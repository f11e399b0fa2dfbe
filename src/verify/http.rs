//! The HTTP/JSON API (HTTP/1.1, kept-alive connections):
//!
//! - `POST /v1/verify` with `{"key": "...", "ip": "203.0.113.7",
//!   "scopes": ["read"], "endpoint": "GET /orders", "user_agent": "..."}`
//!   (only `key` is required; unknown fields are refused, so a misspelt
//!   `scope` cannot silently drop a scope check) answers 200 with
//!   `{"outcome": "valid", ...}` or `{"outcome": "refused", "reason": ...}`.
//! - `GET /v1/health` answers 200 with whether remembered answers are in use.
//!
//! Anything malformed gets a 4xx with `{"error": "..."}`; a database that
//! cannot be reached a 503 (never a "valid"). Nothing here logs a request
//! body: the key is in it.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{NaiveDateTime, SecondsFormat};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::verifier::{Question, Verifier, VerifyError};
use crate::config::Secret;
use crate::keys::VerifyOutcome;

/// The limits of one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body: usize,
    pub request_time: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    key: String,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    user_agent: Option<String>,
}

/// At most this many scopes may be asked for in one request.
const MAX_SCOPES: usize = 64;

pub async fn handle(
    verifier: Arc<Verifier>,
    limits: Limits,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let answer = match tokio::time::timeout(limits.request_time, route(&verifier, limits, req)).await {
        Ok(r) => r,
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the verification took too long; try again",
        ),
    };
    Ok(answer)
}

async fn route(verifier: &Arc<Verifier>, limits: Limits, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.uri().path(), req.method()) {
        ("/v1/verify", &Method::POST) => verify(verifier, limits, req).await,
        ("/v1/verify", _) => not_allowed("POST"),
        ("/v1/health", &Method::GET | &Method::HEAD) => {
            let cache = if !verifier.cache.enabled() {
                "off"
            } else if verifier.cache.is_live() {
                "live"
            } else {
                "bypassed"
            };
            reply(
                StatusCode::OK,
                &json!({"status": "ok", "cache": cache, "remembered": verifier.cache.len()}),
            )
        }
        ("/v1/health", _) => not_allowed("GET, HEAD"),
        _ => error(
            StatusCode::NOT_FOUND,
            "no such endpoint; use POST /v1/verify or GET /v1/health",
        ),
    }
}

async fn verify(verifier: &Arc<Verifier>, limits: Limits, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(ct) = req.headers().get(CONTENT_TYPE) {
        let is_json = ct
            .to_str()
            .ok()
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "the body must be application/json");
        }
    }
    let body = match Limited::new(req.into_body(), limits.max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is larger than {} bytes", limits.max_body),
            )
        }
        Err(_) => return error(StatusCode::BAD_REQUEST, "the body could not be read"),
    };
    let parsed: VerifyBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("the body is not a verification request: {e}"),
            )
        }
    };
    let key = Secret::new(parsed.key);
    let ip = match parsed.ip.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => match text.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => return error(StatusCode::BAD_REQUEST, "ip is not an IPv4 or IPv6 address"),
        },
    };
    if parsed.scopes.len() > MAX_SCOPES {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("at most {MAX_SCOPES} scopes may be required at once"),
        );
    }
    if parsed.scopes.iter().any(|s| s.is_empty()) {
        return error(StatusCode::BAD_REQUEST, "a required scope is empty");
    }
    let question = Question {
        key,
        ip,
        scopes: parsed.scopes,
        endpoint: parsed.endpoint,
        user_agent: parsed.user_agent,
    };
    match verifier.verify(question).await {
        Ok(answer) => reply(StatusCode::OK, &outcome_json(&answer.outcome, answer.cached)),
        Err(VerifyError::Database(_)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the key store is unavailable; the key cannot be verified now",
        ),
        Err(VerifyError::Stopping) => error(StatusCode::SERVICE_UNAVAILABLE, "the service is stopping"),
        Err(VerifyError::Key(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, "the key could not be verified"),
    }
}

fn instant(t: NaiveDateTime) -> String {
    t.and_utc().to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The outcome as the API writes it.
pub fn outcome_json(outcome: &VerifyOutcome, cached: bool) -> Value {
    match outcome {
        VerifyOutcome::Valid(k) => json!({
            "outcome": "valid",
            "key_id": k.key_id,
            "prefix": k.prefix,
            "owner_id": k.owner_id,
            "name": k.name,
            "scopes": k.scopes,
            "expires_at": instant(k.expires_at),
            "grace_ends_at": k.grace_ends_at.map(instant),
            "cached": cached,
        }),
        VerifyOutcome::Refused(r) => {
            let detail = match r {
                crate::keys::Refusal::Malformed(d) | crate::keys::Refusal::MissingScope(d) => Some(d.clone()),
                crate::keys::Refusal::UnreadableRestriction(c) => Some(c.clone()),
                _ => None,
            };
            json!({
                "outcome": "refused",
                "reason": r.code(),
                "detail": detail,
                "message": r.as_reason(),
                "cached": cached,
            })
        }
    }
}

fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut text = body.to_string();
    text.push('\n');
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(status, &json!({ "error": message }))
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, &format!("use {allow}"));
    resp.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    resp
}
