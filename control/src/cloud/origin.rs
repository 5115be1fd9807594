//! The S3 origin: an `object_store` client built from `[origin]`, presigned GET URLs for
//! steering, and a bucket-creation helper for local S3-compatible servers (tests, demo).
//!
//! Real AWS S3 is the same code with a different `[origin]`: leave out `endpoint` (and
//! `allow_http`), set `region` and `bucket`, and give credentials in the config or the usual
//! environment (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, instance role).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::Signer;

use crate::cloud::config::OriginConfig;

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
    b.build()
}

/// Presigned GET URLs for `ids`, valid for `ttl`.
pub async fn presign(
    store: &Arc<AmazonS3>,
    ids: &[String],
    ttl: Duration,
) -> Result<HashMap<String, String>, object_store::Error> {
    let paths: Vec<Path> = ids.iter().map(|id| Path::from(id.as_str())).collect();
    let urls = store.signed_urls(http::Method::GET, &paths, ttl).await?;
    Ok(ids
        .iter()
        .cloned()
        .zip(urls.into_iter().map(|u| u.to_string()))
        .collect())
}

/// Creates the bucket on a local S3-compatible server (moto, MinIO) with a plain
/// `PUT <endpoint>/<bucket>`. Succeeds when the bucket exists already. Not for real AWS: create
/// the bucket there with the console or `aws s3 mb`.
pub async fn create_bucket(o: &OriginConfig) -> Result<(), String> {
    let Some(ep) = &o.endpoint else {
        return Err(
            "create_bucket is for local S3-compatible endpoints; create the AWS bucket with `aws s3 mb`"
                .into(),
        );
    };
    install_crypto_provider();
    let url = format!("{}/{}", ep.trim_end_matches('/'), o.bucket);
    let resp = reqwest::Client::new()
        .put(&url)
        .send()
        .await
        .map_err(|e| format!("PUT {url}: {e}"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if status.is_success() || body.contains("BucketAlreadyOwnedByYou") {
        Ok(())
    } else {
        Err(format!("PUT {url}: {status}: {body}"))
    }
}
