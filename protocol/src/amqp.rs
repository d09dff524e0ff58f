//! Connecting to RabbitMQ with errors a person can act on.
//!
//! Both sides connect the same way, so the "is the broker there?" message lives here once:
//! it names the URL (password redacted) and says how to start a local broker.
//!
//! # TLS
//! `amqps://` URLs verify the broker's certificate against the system's root certificates
//! plus, for a broker certified by a private CA, the CA certificates (PEM) in the file named
//! by the URL's `cacertfile` query parameter (RabbitMQ's name for it in its URI spec), else
//! by [`CA_FILE_ENV`]. The parameter travels with `AMQP_URL` to every process and every
//! connection; the variable suits a CA file mounted beside a URL kept in a secret.

use std::fmt;
use std::path::{Path, PathBuf};

use lapin::options::BasicPublishOptions;
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, DefaultConnectionBuilder};

/// Environment variable naming a PEM file of extra CA certificates for `amqps://`; the URL's
/// [`CA_FILE_PARAM`] wins over it.
pub const CA_FILE_ENV: &str = "FLEETMAP_AMQP_CA_FILE";

/// URL query parameter naming a PEM file of extra CA certificates for `amqps://`, as in
/// `amqps://user:pass@rabbit:5671/%2f?cacertfile=/etc/fleetmap/rabbit-ca.pem`.
pub const CA_FILE_PARAM: &str = "cacertfile";

/// The broker's own error is folded into the message (not chained as a source), so a
/// caller printing the whole chain shows it once.
#[derive(Debug, thiserror::Error)]
pub struct ConnectError {
    pub url: String,
    pub reason: String,
}

/// Marks a reason about TLS trust (a CA file, the broker's certificate): it gets no "is it
/// running?" hint, which would send the reader the wrong way.
const TLS_MARK: &str = "TLS: ";

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot connect to RabbitMQ at {}: {}",
            self.url, self.reason
        )?;
        if !self.reason.contains(TLS_MARK) {
            f.write_str(
                ". Is it running? Start a local one with `rabbitmq-server -detached` (Debian \
                 package rabbitmq-server) or set AMQP_URL",
            )?;
        }
        Ok(())
    }
}

/// Why messages a worker published may not have reached their queue.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publishing to {queue} failed: {source}")]
    Amqp {
        queue: String,
        #[source]
        source: lapin::Error,
    },
    #[error("the broker nacked a message to {queue}")]
    Nacked { queue: String },
    #[error(transparent)]
    Encode(#[from] crate::EncodeError),
}

/// Publishes `messages` to `queue` (the default exchange) on a channel in confirm mode, all
/// before the first confirm is awaited, and waits for every confirm: one round trip for
/// the lot, and `Ok` only once the broker holds them all.
pub async fn publish_confirmed(
    channel: &Channel,
    queue: &str,
    messages: &[(Vec<u8>, BasicProperties)],
) -> Result<(), PublishError> {
    let failed = |source| PublishError::Amqp {
        queue: queue.to_owned(),
        source,
    };
    let mut confirms = Vec::new();
    for (body, props) in messages {
        let confirm = channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue),
                BasicPublishOptions::default(),
                body,
                props.clone(),
            )
            .await
            .map_err(failed)?;
        confirms.push(confirm);
    }
    for confirm in confirms {
        if !confirm.await.map_err(failed)?.is_ack() {
            return Err(PublishError::Nacked {
                queue: queue.to_owned(),
            });
        }
    }
    Ok(())
}

/// How every item message is published, by the coordinator and by a worker splitting a
/// pack: persistent, typed, and named `run/execution/attempt` after its first child, with
/// `+n` for the `n` more children of a pack.
pub fn item_properties(
    run: &str,
    execution: u32,
    attempt: u32,
    children: usize,
) -> BasicProperties {
    let id = match children {
        0 | 1 => format!("{run}/{execution}/{attempt}"),
        n => format!("{run}/{execution}/{attempt}+{}", n - 1),
    };
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/x-fleetmap".into())
        .with_message_id(ShortString::from(id))
}

/// Publishes outcomes to `queue`, persistent, in as few messages as
/// [`encode_outcomes`](crate::encode_outcomes) makes, and waits for every confirm: what a
/// worker does before it acks a delivery.
pub async fn publish_outcomes(
    channel: &Channel,
    queue: &str,
    outcomes: &[crate::OutcomeMessage],
) -> Result<(), PublishError> {
    let props = BasicProperties::default().with_delivery_mode(2);
    let messages: Vec<_> = crate::encode_outcomes(outcomes)?
        .into_iter()
        .map(|body| (body, props.clone()))
        .collect();
    publish_confirmed(channel, queue, &messages).await
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
///
/// For `amqps://` the broker's certificate must chain to a system root or to a CA in the
/// file named by the URL's `cacertfile` or by [`CA_FILE_ENV`] (see the module doc).
pub async fn connect(url: &str, name: &str) -> Result<Connection, ConnectError> {
    let err = |reason: String| ConnectError {
        url: redact_url(url),
        reason,
    };
    let is_tls = url
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("amqps://"));
    let ca = ca_file(url, |name| std::env::var(name).ok()).filter(|_| is_tls);
    let tls = match ca {
        Some(path) => OwnedTLSConfig {
            identity: None,
            cert_chain: Some(read_ca_file(&path).map_err(err)?),
        },
        None => OwnedTLSConfig::default(),
    };
    let props =
        ConnectionProperties::default().with_connection_name(LongString::from(name.to_owned()));
    DefaultConnectionBuilder::new()
        .map_err(|e| err(e.to_string()))?
        .with_uri_str(url.to_owned())
        .with_properties(props)
        .with_tls_config(tls)
        .connect()
        .await
        .map_err(|e| err(explain(e.to_string())))
}

/// The CA file for `url`: its [`CA_FILE_PARAM`] query parameter, else the [`CA_FILE_ENV`]
/// variable read through `lookup`. Empty values count as unset.
fn ca_file(url: &str, lookup: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let from_url = url
        .split_once('?')
        .map(|(_, query)| query.split('#').next().unwrap_or_default())
        .into_iter()
        .flat_map(|query| query.split('&'))
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == CA_FILE_PARAM)
        .map(|(_, value)| percent_decode(value));
    from_url
        .or_else(|| lookup(CA_FILE_ENV))
        .filter(|v| !v.trim().is_empty())
        .map(PathBuf::from)
}

/// Reads a CA file, refusing one without a certificate: lapin would skip it silently and
/// the handshake would then fail with a less helpful "unknown issuer".
fn read_ca_file(path: &Path) -> Result<String, String> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("{TLS_MARK}cannot read the CA file {}: {e}", path.display()))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "{TLS_MARK}no PEM certificate in the CA file {}",
            path.display()
        ));
    }
    Ok(pem)
}

/// Adds what to do when the broker's certificate is not trusted.
fn explain(reason: String) -> String {
    if reason.contains("certificate") || reason.contains("UnknownIssuer") {
        format!(
            "{reason} ({TLS_MARK}the broker's certificate is not trusted; name its CA's PEM \
             file with ?{CA_FILE_PARAM}=… in the URL or with {CA_FILE_ENV})"
        )
    } else {
        reason
    }
}

/// `%XX` escapes decoded (a path in a query string may carry them); anything malformed is
/// kept as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::{CA_FILE_ENV, ConnectError, ca_file, explain, read_ca_file, redact_url};

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

    #[test]
    fn untrusted_certificates_get_tls_advice_instead_of_is_it_running() {
        let tls = ConnectError {
            url: "amqps://u:***@h:5671/%2f".into(),
            reason: explain("IO error: invalid peer certificate: UnknownIssuer".into()),
        }
        .to_string();
        assert!(tls.contains("cacertfile"), "{tls}");
        assert!(tls.contains(CA_FILE_ENV), "{tls}");
        assert!(!tls.contains("Is it running"), "{tls}");
        let refused = ConnectError {
            url: "amqp://h:5672".into(),
            reason: explain("IO error: Connection refused (os error 111)".into()),
        }
        .to_string();
        assert!(refused.ends_with("or set AMQP_URL"), "{refused}");
        assert!(!refused.contains("cacertfile"), "{refused}");
    }

    #[test]
    fn ca_file_comes_from_the_url_then_the_environment() {
        let env = |name: &str| (name == CA_FILE_ENV).then(|| "/env/ca.pem".to_owned());
        let none = |_: &str| None;
        let url = "amqps://u:p@h:5671/%2f?heartbeat=10&cacertfile=/etc/my%20ca.pem";
        assert_eq!(ca_file(url, env), Some(PathBuf::from("/etc/my ca.pem")));
        assert_eq!(
            ca_file("amqps://u:p@h:5671/%2f?heartbeat=10", env),
            Some(PathBuf::from("/env/ca.pem"))
        );
        assert_eq!(ca_file("amqps://u:p@h:5671/%2f", none), None);
        assert_eq!(ca_file("amqps://h/%2f?cacertfile=", none), None);
        assert_eq!(
            ca_file("amqps://h/%2f?cacertfile=/a%2/b#frag", none),
            Some(PathBuf::from("/a%2/b"))
        );
    }

    #[test]
    fn an_unusable_ca_file_is_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("fleetmap-amqp-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not-a-ca.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        for (path, why) in [
            (dir.join("missing.pem"), "cannot read the CA file"),
            (not_pem, "no PEM certificate"),
        ] {
            let err = read_ca_file(&path).unwrap_err();
            assert!(err.contains(why), "{err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
            let shown = ConnectError {
                url: "amqps://h/%2f".into(),
                reason: err,
            }
            .to_string();
            assert!(!shown.contains("Is it running"), "{shown}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
