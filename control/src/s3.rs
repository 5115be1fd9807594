//! The S3 origin as both sides configure and reach it: `[origin]` (the control service) and
//! `[agent.origin]` (the agent) are the same table, and one `object_store` client builder
//! serves both. Real AWS S3 is the same code with a different table: leave out `endpoint` (and
//! `allow_http`), set `region` and `bucket`, and give credentials in the table or the usual
//! environment (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, instance role).

use object_store::aws::{AmazonS3, AmazonS3Builder};
use serde::Deserialize;

/// `[origin]`: where the objects live. With no `endpoint` this is real AWS S3.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    /// S3-compatible endpoint, e.g. `http://127.0.0.1:5000`; absent = AWS S3 for `region`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Bucket name.
    pub bucket: String,
    /// Region (default `us-east-1`).
    #[serde(default = "default_region")]
    pub region: String,
    /// Access key id; absent = from the environment (`AWS_ACCESS_KEY_ID`, profiles, instance role).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key; absent = from the environment.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Allow a plain `http://` endpoint (local S3-compatible servers).
    #[serde(default)]
    pub allow_http: bool,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// Installs rustls's ring crypto provider as the process default, once. The HTTP clients
/// (reqwest, through object_store) are built without a bundled provider so that aws-lc-rs (which
/// needs cmake and clang to build) stays out of the dependency tree; call this before building
/// any client. Idempotent.
pub fn install_crypto_provider() {
    // Err only when a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The S3 client for `[origin]`.
pub fn build_store(o: &OriginConfig) -> Result<AmazonS3, object_store::Error> {
    builder(o).build()
}

/// The client builder for `[origin]`, for callers that add their own retry or timeouts.
pub fn builder(o: &OriginConfig) -> AmazonS3Builder {
    install_crypto_provider();
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(&o.bucket)
        .with_region(&o.region);
    if let Some(ep) = &o.endpoint {
        b = b
            .with_endpoint(ep.trim_end_matches('/'))
            .with_allow_http(o.allow_http)
            .with_virtual_hosted_style_request(false);
    }
    if let (Some(id), Some(secret)) = (&o.access_key_id, &o.secret_access_key) {
        b = b.with_access_key_id(id).with_secret_access_key(secret);
    }
    b
}

/// Why [`create_bucket`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum S3Error {
    /// `[origin]` has no `endpoint`: this is real AWS, where buckets are made another way.
    #[error(
        "create_bucket is for local S3-compatible endpoints; create the AWS bucket with `aws s3 mb`"
    )]
    NotLocal,
    /// The `PUT` did not get an answer.
    #[error("PUT {url}: {source}")]
    Request {
        /// The bucket's URL.
        url: String,
        /// What the HTTP client saw.
        #[source]
        source: reqwest::Error,
    },
    /// The server refused (and not because the bucket is ours already).
    #[error("PUT {url}: {status}: {body}")]
    Refused {
        /// The bucket's URL.
        url: String,
        /// The answer's status.
        status: reqwest::StatusCode,
        /// The answer's body (S3 puts its error code and message there).
        body: String,
    },
}

/// Creates the bucket on a local S3-compatible server (moto, MinIO) with a plain
/// `PUT <endpoint>/<bucket>`. Succeeds when the bucket exists already. Not for real AWS: create
/// the bucket there with the console or `aws s3 mb`.
pub async fn create_bucket(o: &OriginConfig) -> Result<(), S3Error> {
    let Some(ep) = &o.endpoint else {
        return Err(S3Error::NotLocal);
    };
    install_crypto_provider();
    let url = format!("{}/{}", ep.trim_end_matches('/'), o.bucket);
    let resp = match reqwest::Client::new().put(&url).send().await {
        Ok(r) => r,
        Err(source) => return Err(S3Error::Request { url, source }),
    };
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if status.is_success() || body.contains("BucketAlreadyOwnedByYou") {
        Ok(())
    } else {
        Err(S3Error::Refused { url, status, body })
    }
}
