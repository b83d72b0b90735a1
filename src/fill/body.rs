//! Reading HTTP bodies with a bound: a peer that answers with an endless or
//! huge body fails the request instead of growing the daemon's memory.

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("body is larger than {max} bytes")]
    TooLarge { max: u64 },
    #[error("reading the body: {0}")]
    Read(String),
}

/// Reads `resp`'s body while it streams in, refusing it as soon as it passes
/// `max` bytes (or announces more in `Content-Length`): never more than `max`
/// plus one network chunk is held.
pub(crate) async fn read_capped(
    mut resp: reqwest::Response,
    max: u64,
) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(BodyError::TooLarge { max });
    }
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() as u64 + chunk.len() as u64 > max {
                    return Err(BodyError::TooLarge { max });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(BodyError::Read(e.without_url().to_string())),
        }
    }
}

/// Up to `max` bytes of an error answer, as text, for a message: the rest is
/// not read.
pub(crate) async fn error_text(mut resp: reqwest::Response, max: usize) -> String {
    let mut body = Vec::new();
    while body.len() < max {
        match resp.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(max - body.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}
