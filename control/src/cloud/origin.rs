//! The S3 origin: an `object_store` client built from `[origin]`, presigned GET URLs for
//! steering, and a bucket-creation helper for local S3-compatible servers (tests, demo).
//!
//! Real AWS S3 is the same code with a different `[origin]`: leave out `endpoint` (and
//! `allow_http`), set `region` and `bucket`, and give credentials in the config or the usual
//! environment (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, instance role).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::signer::Signer;

pub use crate::s3::{build_store, create_bucket, install_crypto_provider, S3Error};

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
