//! Where fill bytes come from: the S3 origin (object_store's S3 client, so real AWS is a config
//! change) or a peer appliance (tiered fill: plain HTTP GET of a URL the agent signs itself).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::aws::AmazonS3;
use object_store::{ClientOptions, ObjectStoreExt, RetryConfig};

use super::config::OriginConfig;

/// A byte stream of one object.
pub type ByteStream = BoxStream<'static, Result<Bytes, OriginError>>;

/// Why bytes could not be had from the origin or a peer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OriginError {
    /// `[agent.origin]` does not make an S3 client.
    #[error("agent.origin: {0}")]
    Client(#[source] object_store::Error),
    /// The origin's `GET` failed (connection, status, missing object).
    #[error("origin GET {path}: {source}")]
    Get {
        /// The object's key.
        path: String,
        /// What object_store saw.
        #[source]
        source: object_store::Error,
    },
    /// The origin's body broke off.
    #[error("{0}")]
    Stream(#[source] object_store::Error),
    /// The peer's `GET` did not get an answer. Neither the URL nor the source's text carries
    /// the URL's signature.
    #[error("peer GET {url}: {source}")]
    PeerGet {
        /// The peer URL without its query (the signature).
        url: String,
        /// What the HTTP client saw.
        #[source]
        source: reqwest::Error,
    },
    /// The peer answered with an error status.
    #[error("peer GET {url}: HTTP {status}")]
    PeerStatus {
        /// The peer URL without its query (the signature).
        url: String,
        /// The answer's status.
        status: reqwest::StatusCode,
    },
    /// The peer's body broke off.
    #[error("{0}")]
    PeerStream(#[source] reqwest::Error),
}

/// The S3 origin.
#[derive(Clone)]
pub struct Origin {
    store: Arc<AmazonS3>,
}

impl Origin {
    /// From `[agent.origin]`. Credentials not in the config come from the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, instance metadata).
    pub fn new(cfg: &OriginConfig) -> Result<Origin, OriginError> {
        let store = crate::s3::builder(cfg)
            // The agent's own breaker and backoff decide about retries; one quick retry here
            // covers a dropped connection.
            .with_retry(RetryConfig {
                max_retries: 1,
                retry_timeout: Duration::from_secs(10),
                ..RetryConfig::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(cfg.allow_http)
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(300)),
            )
            .build()
            .map_err(OriginError::Client)?;
        Ok(Origin {
            store: Arc::new(store),
        })
    }

    /// Streams object `id`.
    pub async fn get(&self, id: &str) -> Result<ByteStream, OriginError> {
        let path = object_store::path::Path::from(id);
        let r = self
            .store
            .get(&path)
            .await
            .map_err(|source| OriginError::Get {
                path: path.to_string(),
                source,
            })?;
        Ok(r.into_stream()
            .map(|c| c.map_err(OriginError::Stream))
            .boxed())
    }
}

/// Streams `url` from a peer appliance.
pub async fn peer_get(http: &reqwest::Client, url: &str) -> Result<ByteStream, OriginError> {
    let r = http
        .get(url)
        .send()
        .await
        .map_err(|source| OriginError::PeerGet {
            url: redact(url).to_string(),
            // reqwest's errors quote the whole URL, signature included: never log that.
            source: source.without_url(),
        })?;
    if !r.status().is_success() {
        return Err(OriginError::PeerStatus {
            url: redact(url).to_string(),
            status: r.status(),
        });
    }
    Ok(r.bytes_stream()
        .map(|c| c.map_err(|e| OriginError::PeerStream(e.without_url())))
        .boxed())
}

fn redact(url: &str) -> &str {
    url.split_once('?').map_or(url, |(u, _)| u)
}

/// The local address this host uses to reach `base` (an `http://host:port` URL): the client
/// address a peer will see, which the agent signs its peer-fill URLs for.
pub fn local_addr_towards(base: &str) -> Option<IpAddr> {
    let rest = base.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let peer: SocketAddr = authority.parse().ok().or_else(|| {
        use std::net::ToSocketAddrs;
        let with_port = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        with_port.to_socket_addrs().ok()?.next()
    })?;
    let bind: SocketAddr = if peer.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(peer).ok()?;
    Some(s.local_addr().ok()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_address_towards_loopback() {
        assert_eq!(
            local_addr_towards("http://127.0.0.1:8080"),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(local_addr_towards("nonsense"), None);
        assert_eq!(redact("http://a/b?sig=x"), "http://a/b");
    }

    /// A port on loopback that refuses connections.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn a_failed_peer_get_names_the_url_without_its_signature() {
        let url = format!("http://127.0.0.1:{}/a.m4s?exp=1&sig=SECRET", closed_port());
        crate::s3::install_crypto_provider();
        let Err(e) = peer_get(&reqwest::Client::new(), &url).await else {
            panic!("nothing listens there");
        };
        assert!(matches!(e, OriginError::PeerGet { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("peer GET {}: ", redact(&url))),
            "{text}"
        );
        assert!(!text.contains("SECRET"), "{text}");
        assert!(std::error::Error::source(&e).is_some());
    }
}
