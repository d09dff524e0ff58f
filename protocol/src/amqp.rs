//! Connecting to RabbitMQ with errors a person can act on.
//!
//! Both sides connect the same way, so the "is the broker there?" message lives here once:
//! it names the URL (password redacted) and says how to start a local broker.

use lapin::types::LongString;
use lapin::{Connection, ConnectionProperties};

/// The broker's own error is folded into the message (not chained as a source), so a
/// caller printing the whole chain shows it once.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot connect to RabbitMQ at {url}: {reason}. Is it running? Start a local one with \
     `rabbitmq-server -detached` (Debian package rabbitmq-server) or set AMQP_URL"
)]
pub struct ConnectError {
    pub url: String,
    pub reason: String,
}

/// `amqp://user:secret@host` → `amqp://user:***@host`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Opens a connection named `name` (it shows in the management UI's connection list).
pub async fn connect(url: &str, name: &str) -> Result<Connection, ConnectError> {
    let props =
        ConnectionProperties::default().with_connection_name(LongString::from(name.to_owned()));
    Connection::connect(url, props)
        .await
        .map_err(|e| ConnectError {
            url: redact_url(url),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqps://u:p@ss@h:5671"), "amqps://u:***@h:5671");
        assert_eq!(redact_url("amqp://h:5672"), "amqp://h:5672");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
