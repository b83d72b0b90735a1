//! `POST /oauth/token`: an OAuth2 client-credentials token endpoint (RFC 6749
//! §4.4, credentials in the form body) whose tokens expire after
//! `--oauth-token-ttl`; `/v1/events` then accepts only a live token.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::api::error;
use crate::sim::{now_ms, Sim, Stats};

/// Fixed at start.
#[derive(Debug, Clone)]
pub struct OAuth {
    pub client_id: String,
    pub client_secret: String,
    pub ttl_ms: i64,
}

pub async fn token(State(sim): State<Arc<Sim>>, body: String) -> Response {
    Stats::bump(&sim.stats.token_requests, 1);
    let Some(oauth) = &sim.settings.oauth else {
        return error(StatusCode::NOT_FOUND, "no token endpoint");
    };
    let form = format!("/?{body}")
        .parse::<Uri>()
        .ok()
        .and_then(|u| Query::<Vec<(String, String)>>::try_from_uri(&u).ok())
        .map(|Query(v)| v)
        .unwrap_or_default();
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if field("grant_type") != Some("client_credentials")
        || field("client_id") != Some(oauth.client_id.as_str())
        || field("client_secret") != Some(oauth.client_secret.as_str())
    {
        Stats::bump(&sim.stats.tokens_refused, 1);
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "invalid_client" })),
        )
            .into_response();
    }
    let mut tokens = sim.tokens.lock().unwrap();
    let n = Stats::get(&sim.stats.token_requests);
    let token = format!("tok-{n}-{}", rand::random::<u32>());
    let now = now_ms();
    tokens.retain(|(_, until)| *until > now);
    tokens.push((token.clone(), now + oauth.ttl_ms));
    Stats::bump(&sim.stats.tokens_issued, 1);
    Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": oauth.ttl_ms as f64 / 1000.0,
        "scope": field("scope"),
    }))
    .into_response()
}

/// Whether the request carries a token issued here that has not expired.
pub fn valid(sim: &Sim, headers: &HeaderMap) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let now = now_ms();
    sim.tokens
        .lock()
        .unwrap()
        .iter()
        .any(|(t, until)| t == given && *until > now)
}

/// `POST /control/revoke_tokens`: every token issued so far stops working (a
/// vendor that rotates keys before `expires_in` says).
pub async fn revoke(State(sim): State<Arc<Sim>>) -> Response {
    let n = {
        let mut t = sim.tokens.lock().unwrap();
        let n = t.len();
        t.clear();
        n
    };
    Json(json!({ "revoked": n })).into_response()
}
