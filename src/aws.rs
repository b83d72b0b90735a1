//! AWS clients built from `[aws]`, and how AWS errors are classified.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};

use crate::config::AwsConfig;
use crate::metrics::AwsOutcome;

/// Shared SDK configuration (credentials chain, region, optional endpoint such
/// as a local emulator).
pub(crate) async fn sdk_config(aws: &AwsConfig) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                // Long polls take 20 s; leave room above that.
                .operation_attempt_timeout(Duration::from_secs(35))
                .build(),
        )
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3));
    if let Some(region) = &aws.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &aws.endpoint_url {
        loader = loader.endpoint_url(url.as_str().trim_end_matches('/'));
    }
    loader.load().await
}

pub(crate) fn sqs_client(conf: &aws_config::SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(conf)
}

pub(crate) fn cloudwatch_client(conf: &aws_config::SdkConfig) -> aws_sdk_cloudwatch::Client {
    aws_sdk_cloudwatch::Client::new(conf)
}

/// How an AWS call failed, as far as retrying is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AwsFailure {
    pub(crate) outcome: AwsOutcome,
    pub(crate) retryable: bool,
    pub(crate) code: Option<String>,
    pub(crate) message: String,
}

impl std::fmt::Display for AwsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{code}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "AWS.SimpleQueueService.RequestThrottled",
    "RequestLimitExceeded",
];

/// Classifies any SDK error: throttling and transient failures are retryable,
/// access denied or a missing queue are not.
pub(crate) fn classify<E, R>(err: &SdkError<E, R>) -> AwsFailure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let message = aws_sdk_sqs::error::DisplayErrorContext(err).to_string();
    match err {
        SdkError::ServiceError(se) => {
            let code = se.err().code().map(str::to_string);
            let throttled = code.as_deref().is_some_and(|c| THROTTLING.contains(&c));
            let server_side = code.as_deref().is_some_and(|c| {
                matches!(
                    c,
                    "InternalError"
                        | "InternalFailure"
                        | "ServiceUnavailable"
                        | "InternalServiceError"
                )
            });
            AwsFailure {
                outcome: if throttled {
                    AwsOutcome::Throttled
                } else {
                    AwsOutcome::Error
                },
                retryable: throttled || server_side,
                code,
                message: se.err().message().map(str::to_string).unwrap_or(message),
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            AwsFailure {
                outcome: AwsOutcome::Error,
                retryable: true,
                code: None,
                message,
            }
        }
        _ => AwsFailure {
            outcome: AwsOutcome::Error,
            retryable: false,
            code: None,
            message,
        },
    }
}

/// The queue's name, the label value for queue metrics (URLs are long and
/// carry the account id).
pub(crate) fn queue_name(url: &str) -> &str {
    url.trim_end_matches('/').rsplit('/').next().unwrap_or(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_name_is_last_path_segment() {
        assert_eq!(
            queue_name("https://sqs.us-east-1.amazonaws.com/123456789012/vendor-orders"),
            "vendor-orders"
        );
        assert_eq!(queue_name("http://127.0.0.1:5000/123/q.fifo/"), "q.fifo");
    }
}
