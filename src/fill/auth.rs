//! `source.auth`: a static bearer token, HTTP Basic, or OAuth2 client
//! credentials (RFC 6749 §4.4) with the access token cached, refreshed shortly
//! before it expires and once when the source answers 401.
//!
//! Written over reqwest rather than with the `oauth2` crate: the client
//! credentials grant is one form POST and one JSON answer, and the crate would
//! add its own HTTP abstraction, `sha2`/`base64`/`chrono` features and typed
//! builders for grants gapwatch never uses, to a build that runs on 2-core CI.

use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use reqwest::header::HeaderValue;
use serde::Deserialize;
use url::Url;

use crate::config::{AuthStyle, Secret, SourceAuth};
use crate::internal_events::SourceTokenRequested;
use crate::metrics::{Metrics, TokenOutcome};
use std::sync::Arc;

/// A token is refreshed this long before its `expires_in` runs out (at most;
/// a fifth of a short lifetime), so no request leaves with a token that
/// expires on the way.
const MAX_MARGIN: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    /// The token endpoint refused the client: it would refuse again.
    #[error("token endpoint {url} refused the client credentials with status {status}")]
    Refused { url: String, status: u16 },
    /// Worth another try: a network error, a 5xx/429, an unusable answer.
    #[error("token request failed: {0}")]
    Transient(String),
}

/// Why `source.auth` cannot be used (config validation catches most of it;
/// this is what is left: a value that is no valid header value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthConfigError {
    #[error("source.auth.token is not a valid header value")]
    BadToken,
    #[error("source.auth credentials are not a valid header value")]
    BadCredentials,
}

/// The credential one request was sent with; `generation` tells a 401 for an
/// old token from one for the token just fetched.
pub(crate) struct Credential {
    pub(crate) header: Option<HeaderValue>,
    generation: u64,
}

pub(crate) enum Auth {
    None,
    Static(HeaderValue),
    OAuth2(Box<OAuth2>),
}

pub(crate) struct OAuth2 {
    feed: String,
    token_url: Url,
    client_id: Secret,
    client_secret: Secret,
    scopes: Vec<String>,
    style: AuthStyle,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    /// Held while a token is fetched: concurrent requests wait for that one
    /// fetch instead of each asking the token endpoint.
    cached: tokio::sync::Mutex<Cached>,
}

#[derive(Default)]
struct Cached {
    token: Option<(HeaderValue, Option<Instant>)>,
    generation: u64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<f64>,
}

fn sensitive(s: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(s).ok()?;
    v.set_sensitive(true);
    Some(v)
}

fn basic(user: &str, password: &str) -> Option<HeaderValue> {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    sensitive(&format!("Basic {encoded}"))
}

impl Auth {
    pub(crate) fn new(
        feed: &str,
        config: Option<&SourceAuth>,
        client: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Result<Self, AuthConfigError> {
        Ok(match config {
            None => Auth::None,
            Some(SourceAuth::Bearer { token }) => Auth::Static(
                sensitive(&format!("Bearer {}", token.expose()))
                    .ok_or(AuthConfigError::BadToken)?,
            ),
            Some(SourceAuth::Basic { username, password }) => Auth::Static(
                basic(username.expose(), password.expose())
                    .ok_or(AuthConfigError::BadCredentials)?,
            ),
            Some(SourceAuth::Oauth2ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scopes,
                auth_style,
            }) => {
                metrics.init_source_token(feed);
                Auth::OAuth2(Box::new(OAuth2 {
                    feed: feed.to_string(),
                    token_url: token_url.clone(),
                    client_id: client_id.clone(),
                    client_secret: client_secret.clone(),
                    scopes: scopes.clone(),
                    style: *auth_style,
                    client,
                    metrics,
                    cached: tokio::sync::Mutex::new(Cached::default()),
                }))
            }
        })
    }

    /// The `Authorization` value for the next request.
    pub(crate) async fn credential(&self) -> Result<Credential, AuthError> {
        match self {
            Auth::None => Ok(Credential {
                header: None,
                generation: 0,
            }),
            Auth::Static(v) => Ok(Credential {
                header: Some(v.clone()),
                generation: 0,
            }),
            Auth::OAuth2(o) => o.credential().await,
        }
    }

    /// The source answered 401 to `used`. Returns whether a retry with a new
    /// token makes sense (OAuth2 only); the cached token is dropped unless a
    /// newer one was fetched meanwhile.
    pub(crate) async fn rejected(&self, used: &Credential) -> bool {
        match self {
            Auth::OAuth2(o) => {
                let mut c = o.cached.lock().await;
                if c.generation == used.generation {
                    c.token = None;
                }
                true
            }
            _ => false,
        }
    }
}

impl OAuth2 {
    async fn credential(&self) -> Result<Credential, AuthError> {
        let mut c = self.cached.lock().await;
        if let Some((v, until)) = &c.token {
            if until.is_none_or(|u| Instant::now() < u) {
                return Ok(Credential {
                    header: Some(v.clone()),
                    generation: c.generation,
                });
            }
        }
        let result = self.fetch().await;
        self.metrics.emit(SourceTokenRequested {
            feed: &self.feed,
            outcome: match &result {
                Ok(_) => TokenOutcome::Ok,
                Err(AuthError::Refused { .. }) => TokenOutcome::Refused,
                Err(AuthError::Transient(_)) => TokenOutcome::Error,
            },
        });
        let (v, until) = result?;
        c.generation += 1;
        c.token = Some((v.clone(), until));
        tracing::debug!(generation = c.generation, "source access token fetched");
        Ok(Credential {
            header: Some(v),
            generation: c.generation,
        })
    }

    async fn fetch(&self) -> Result<(HeaderValue, Option<Instant>), AuthError> {
        let mut form: Vec<(&str, String)> = vec![("grant_type", "client_credentials".into())];
        if !self.scopes.is_empty() {
            form.push(("scope", self.scopes.join(" ")));
        }
        let mut req = self.client.post(self.token_url.clone());
        match self.style {
            AuthStyle::Body => {
                form.push(("client_id", self.client_id.expose().to_string()));
                form.push(("client_secret", self.client_secret.expose().to_string()));
            }
            AuthStyle::Basic => {
                // RFC 6749 §2.3.1: both are form-urlencoded before Basic encoding.
                let id = utf8_percent_encode(self.client_id.expose(), NON_ALPHANUMERIC);
                let secret = utf8_percent_encode(self.client_secret.expose(), NON_ALPHANUMERIC);
                let v = basic(&id.to_string(), &secret.to_string())
                    .ok_or_else(|| AuthError::Transient("unusable client credentials".into()))?;
                req = req.header(reqwest::header::AUTHORIZATION, v);
            }
        }
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
            .collect::<Vec<_>>()
            .join("&");
        let started = Instant::now();
        let resp = req
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| AuthError::Transient(e.without_url().to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            let code = status.as_u16();
            return Err(if status.is_client_error() && !matches!(code, 408 | 429) {
                AuthError::Refused {
                    url: crate::redact::text(self.token_url.as_str()),
                    status: code,
                }
            } else {
                AuthError::Transient(format!("token endpoint answered {code}"))
            });
        }
        let answer: TokenAnswer = resp.json().await.map_err(|_| {
            AuthError::Transient("token answer is not a JSON token response".into())
        })?;
        let v = sensitive(&format!("Bearer {}", answer.access_token)).ok_or_else(|| {
            AuthError::Transient("access_token is not a valid header value".into())
        })?;
        let until = answer
            .expires_in
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| {
                let life = Duration::from_secs_f64(s.min(1e9));
                started + life - (life / 5).min(MAX_MARGIN)
            });
        Ok((v, until))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_matches_rfc_7617_example() {
        assert_eq!(
            basic("Aladdin", "open sesame").unwrap(),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }
}
