//! The agent's view of its data plane: the admin listener's `/metrics`, `/catalog`,
//! `/catalog/changes`, `/demand` and `/reload`, and the files the data plane reads on reload (signing keys, served prefixes).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use edgeplane_api::TierKind;

/// Makes the pinned XDP maps of the data plane serve exactly a set of prefixes (provided by the
/// `edgeplane` binary, which owns the XDP code). Returns a one-line summary when it changed
/// anything, `None` when the maps already held the set. Its errors are the XDP code's own,
/// boxed (the agent logs them as `XDP prefixes: …` and retries).
pub type PrefixSink = Box<dyn Fn(&[IpNet]) -> Result<Option<String>, SinkError> + Send + Sync>;

/// What a [`PrefixSink`] fails with.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Why a call to the data plane's admin listener failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// `POST /reload` did not get an answer.
    #[error("data plane reload: {0}")]
    Reload(#[source] reqwest::Error),
    /// `POST /reload` was refused.
    #[error("data plane reload: HTTP {0}")]
    ReloadStatus(reqwest::StatusCode),
    /// `GET /metrics` failed (no answer, an error status, a broken body).
    #[error("data plane metrics: {0}")]
    Metrics(#[source] reqwest::Error),
    /// `GET /catalog` failed (no answer, an error status, not the JSON expected).
    #[error("data plane catalog: {0}")]
    Catalog(#[source] reqwest::Error),
    /// `GET /demand` failed (no answer, an error status, not the JSON expected).
    #[error("data plane demand: {0}")]
    Demand(#[source] reqwest::Error),
}

/// A tier as the data plane's config names it.
#[derive(Debug, Clone)]
pub struct TierSpec {
    /// Name.
    pub name: String,
    /// Flash or storage.
    pub kind: TierKind,
    /// Directory.
    pub path: PathBuf,
}

/// What the agent needs to know about its data plane (from the same config file).
pub struct Dataplane {
    /// The admin listener.
    pub admin: SocketAddr,
    /// The tiers.
    pub tiers: Vec<TierSpec>,
    /// `signing.keys_file`, when signing is on.
    pub keys_file: Option<PathBuf>,
    /// `access.prefixes_file`, when set.
    pub prefixes_file: Option<PathBuf>,
    /// Pushes prefixes into the XDP maps, when the data plane runs XDP.
    pub xdp: Option<PrefixSink>,
}

/// One tier in the data plane's `GET /catalog`.
#[derive(Debug, Clone, Deserialize)]
pub struct CatalogTier {
    /// Name.
    pub name: String,
    /// Serving from it.
    pub up: bool,
    /// Objects.
    pub objects: u64,
    /// Bytes.
    pub bytes: u64,
    /// Object ids.
    #[serde(default)]
    pub ids: Vec<String>,
}

/// The data plane's `GET /catalog` (every page of it, for [`AdminClient::catalog`]).
#[derive(Debug, Clone, Deserialize)]
pub struct CatalogView {
    /// Catalog generation (a rescan increases it).
    #[serde(default)]
    pub generation: u64,
    /// Tiers.
    pub tiers: Vec<CatalogTier>,
    /// The id the next page starts after; `None` on the last page.
    #[serde(default)]
    pub next: Option<String>,
    /// The change feed's epoch (a data plane without the feed sends none).
    #[serde(default)]
    pub epoch: Option<String>,
    /// The feed's number of the snapshot listed (of the first page, for a whole listing):
    /// follow `GET /catalog/changes` from it.
    #[serde(default)]
    pub seq: u64,
}

/// One change in the data plane's `GET /catalog/changes`.
#[derive(Debug, Clone, Deserialize)]
pub struct CatalogChange {
    /// Its number.
    pub seq: u64,
    /// `add` (added, replaced or moved to `tier`) or `remove`.
    pub op: String,
    /// The content id.
    pub id: String,
    /// The tier serving it since (for `remove`: the one it was served from).
    pub tier: String,
}

/// The data plane's `GET /catalog/changes`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChangesView {
    /// The feed's epoch: numbers from another epoch mean nothing.
    pub epoch: String,
    /// The feed cannot be followed from the number asked: list the catalog in full.
    pub reset: bool,
    /// The number to ask from next.
    pub seq: u64,
    /// More changes follow (ask again from `seq`).
    #[serde(default)]
    pub more: bool,
    /// Catalog generation.
    #[serde(default)]
    pub generation: u64,
    /// The tiers' counts (no ids).
    pub tiers: Vec<CatalogTier>,
    /// The changes after the number asked, in order.
    #[serde(default)]
    pub changes: Vec<CatalogChange>,
}

/// Ids asked for per `GET /catalog` page (the data plane allows up to 1 000 000).
const CATALOG_PAGE: usize = 200_000;
/// Changes asked for per `GET /catalog/changes` (the data plane allows up to 100 000).
const CHANGES_PAGE: usize = 10_000;

/// The numbers the agent reads from `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    /// Sum of `edgeplane_response_bytes_total`.
    pub response_bytes: f64,
    /// `edgeplane_open_connections`.
    pub connections: f64,
    /// `edgeplane_tls_mode{mode}` that is 1, if any.
    pub tls_mode: Option<String>,
    /// Per tier: sum of `edgeplane_tier_io_errors_total{tier}`.
    pub disk_errors: BTreeMap<String, f64>,
    /// `edgeplane_draining 1`: the data plane is draining (`edgeplane drain`).
    pub draining: bool,
}

/// Reads the series the agent needs out of Prometheus text.
pub fn parse_metrics(text: &str) -> Scrape {
    let mut s = Scrape::default();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let label = |key: &str| -> Option<&str> {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == key).then(|| v.trim_matches('"'))
            })
        };
        match name {
            "edgeplane_response_bytes_total" => s.response_bytes += v,
            "edgeplane_open_connections" => s.connections = v,
            "edgeplane_draining" => s.draining = v >= 1.0,
            "edgeplane_tls_mode" if v >= 1.0 => s.tls_mode = label("mode").map(str::to_string),
            "edgeplane_tier_io_errors_total" => {
                if let Some(t) = label("tier") {
                    *s.disk_errors.entry(t.to_string()).or_default() += v;
                }
            }
            _ => {}
        }
    }
    s
}

/// Writes `contents` to `path` atomically: temporary in the same directory, fsync, rename,
/// fsync the directory.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// HTTP calls to the data plane's admin listener.
#[derive(Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    base: String,
}

impl AdminClient {
    /// For the admin listener at `addr`.
    pub fn new(http: reqwest::Client, addr: SocketAddr) -> AdminClient {
        AdminClient {
            http,
            base: format!("http://{addr}"),
        }
    }

    /// `POST /reload?rescan=0`: rereads the config, the keys and the prefixes files. The
    /// catalog is not rebuilt (the data plane's tier watch keeps it current; a rescan would
    /// cost seconds at millions of objects and reset the change feed the agent follows).
    pub async fn reload(&self) -> Result<(), AdminError> {
        let r = self
            .http
            .post(format!("{}/reload?rescan=0", self.base))
            .send()
            .await
            .map_err(AdminError::Reload)?;
        if !r.status().is_success() {
            return Err(AdminError::ReloadStatus(r.status()));
        }
        Ok(())
    }

    /// `GET /metrics`, parsed.
    pub async fn scrape(&self) -> Result<Scrape, AdminError> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(AdminError::Metrics)?
            .text()
            .await
            .map_err(AdminError::Metrics)?;
        Ok(parse_metrics(&text))
    }

    /// `GET /catalog`, every page (`?after=<next>` until `next` is null), the ids of each
    /// tier joined. Pages of another generation (a rescan between pages) start the listing
    /// over, up to 3 times; after that the last listing is returned as read.
    pub async fn catalog(&self) -> Result<CatalogView, AdminError> {
        let mut attempts = 0;
        'listing: loop {
            attempts += 1;
            let mut view = self.catalog_page(None).await?;
            while let Some(after) = view.next.take() {
                let page = self.catalog_page(Some(&after)).await?;
                if page.generation != view.generation && attempts < 3 {
                    continue 'listing;
                }
                for (tier, more) in view.tiers.iter_mut().zip(page.tiers) {
                    tier.ids.extend(more.ids);
                    (tier.up, tier.objects, tier.bytes) = (more.up, more.objects, more.bytes);
                }
                view.next = page.next;
            }
            return Ok(view);
        }
    }

    async fn catalog_page(&self, after: Option<&str>) -> Result<CatalogView, AdminError> {
        let mut url = format!("{}/catalog?limit={CATALOG_PAGE}", self.base);
        if let Some(after) = after {
            // Content ids are [A-Za-z0-9._-]: nothing to escape.
            url.push_str("&after=");
            url.push_str(after);
        }
        self.http
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(AdminError::Catalog)?
            .json()
            .await
            .map_err(AdminError::Catalog)
    }

    /// `GET /catalog/changes?since=SEQ&epoch=E`: the changes after `since` in the feed of
    /// `epoch` (or `reset`). `None` when the data plane has no feed (an older one answers 404).
    pub async fn changes(
        &self,
        since: u64,
        epoch: &str,
    ) -> Result<Option<ChangesView>, AdminError> {
        let r = self
            .http
            .get(format!(
                "{}/catalog/changes?since={since}&epoch={epoch}&limit={CHANGES_PAGE}",
                self.base
            ))
            .send()
            .await
            .map_err(AdminError::Catalog)?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        r.error_for_status()
            .map_err(AdminError::Catalog)?
            .json()
            .await
            .map(Some)
            .map_err(AdminError::Catalog)
    }

    /// `GET /demand?top=N`: the `top` most requested objects.
    pub async fn demand(&self, top: usize) -> Result<super::demand::DemandView, AdminError> {
        self.http
            .get(format!("{}/demand?top={top}", self.base))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(AdminError::Demand)?
            .json()
            .await
            .map_err(AdminError::Demand)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_reads_the_series_it_needs() {
        let text = "# HELP x\n\
            edgeplane_response_bytes_total{tier=\"flash\"} 1000\n\
            edgeplane_response_bytes_total{tier=\"hdd\"} 24\n\
            edgeplane_open_connections 7\n\
            edgeplane_draining 1\n\
            edgeplane_tls_mode{mode=\"ktls\"} 0\n\
            edgeplane_tls_mode{mode=\"userspace\"} 1\n\
            edgeplane_tier_io_errors_total{tier=\"hdd\",kind=\"read\"} 2\n\
            edgeplane_tier_io_errors_total{tier=\"hdd\",kind=\"open\"} 1\n\
            garbage line\n";
        let s = parse_metrics(text);
        assert_eq!(s.response_bytes, 1024.0);
        assert_eq!(s.connections, 7.0);
        assert_eq!(s.tls_mode.as_deref(), Some("userspace"));
        assert_eq!(s.disk_errors.get("hdd"), Some(&3.0));
        assert!(s.draining);
        assert!(!parse_metrics("edgeplane_draining 0\n").draining);
    }

    #[tokio::test]
    async fn admin_errors_name_the_call_and_keep_the_cause() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        crate::s3::install_crypto_provider();
        let admin = AdminClient::new(reqwest::Client::new(), ([127, 0, 0, 1], port).into());
        let e = admin.reload().await.unwrap_err();
        assert!(matches!(e, AdminError::Reload(_)), "{e:?}");
        assert!(e.to_string().starts_with("data plane reload: "), "{e}");
        assert!(std::error::Error::source(&e).is_some());
        let e = admin.scrape().await.unwrap_err();
        assert!(e.to_string().starts_with("data plane metrics: "), "{e}");
        let e = admin.catalog().await.unwrap_err();
        assert!(e.to_string().starts_with("data plane catalog: "), "{e}");
        assert_eq!(
            AdminError::ReloadStatus(reqwest::StatusCode::SERVICE_UNAVAILABLE).to_string(),
            "data plane reload: HTTP 503 Service Unavailable"
        );
    }

    #[test]
    fn atomic_write_replaces_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/keys.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}
