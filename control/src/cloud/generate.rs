//! A synthetic catalog: titles × renditions × segments with deterministic pseudo-random content,
//! so sizes and SHA-256s are stable for a seed, and an uploader that puts it at the origin.
//!
//! Content ids are `t<title:04>-<rendition>-<segment:04>.m4s` (e.g. `t0007-720p-0003.m4s`).
//! A segment's size is `bitrate × segment_secs / 8 × scale` bytes (at least 1). Its bytes are
//! a xorshift stream seeded from SHA-256(seed ‖ content id), so any object can be regenerated
//! alone (the uploader never holds the whole catalog in memory).

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};

use edgeplane_api::{Catalog, ObjectInfo, Rendition, Title};

/// One rendition of the ladder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenditionSpec {
    /// Name, e.g. `720p` (`[A-Za-z0-9_-]+`).
    pub name: String,
    /// Bits per second.
    pub bitrate: u64,
}

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct CatalogSpec {
    /// Number of titles.
    pub titles: usize,
    /// The bitrate ladder every title has.
    pub renditions: Vec<RenditionSpec>,
    /// Segments per rendition.
    pub segments: usize,
    /// Seconds per segment.
    pub segment_secs: f64,
    /// Multiplies every size (e.g. 0.001 for tests).
    pub scale: f64,
    /// Content seed.
    pub seed: u64,
}

/// The default ladder: 240p 400 kb/s, 480p 1.2 Mb/s, 720p 3 Mb/s, 1080p 6 Mb/s.
pub fn default_renditions() -> Vec<RenditionSpec> {
    [
        ("240p", 400_000),
        ("480p", 1_200_000),
        ("720p", 3_000_000),
        ("1080p", 6_000_000),
    ]
    .iter()
    .map(|(n, b)| RenditionSpec {
        name: n.to_string(),
        bitrate: *b,
    })
    .collect()
}

/// Why a catalog spec (a rendition, a count, a size) is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// `name:bitrate` with a bitrate that is not a number.
    #[error("rendition {rendition:?}: bitrate {bitrate:?} is not a number")]
    Bitrate {
        /// The whole rendition text.
        rendition: String,
        /// The bitrate part.
        bitrate: String,
        /// The parse error.
        #[source]
        source: std::num::ParseIntError,
    },
    /// A name outside `[A-Za-z0-9_-]+`.
    #[error("rendition name {0:?} must match [A-Za-z0-9_-]+")]
    Name(String),
    /// A bare name that is not one of the default ladder's.
    #[error("rendition {0:?}: give a bitrate as {0}:BITS_PER_SECOND")]
    NoBitrate(String),
    /// More than 10000 titles.
    #[error("at most 10000 titles")]
    TooManyTitles,
    /// More than 10000 segments per rendition.
    #[error("at most 10000 segments per rendition")]
    TooManySegments,
    /// A scale that is not a positive number.
    #[error("scale {0} must be positive")]
    Scale(f64),
    /// A segment duration that is not a positive number.
    #[error("segment_secs {0} must be positive")]
    SegmentSecs(f64),
}

/// Parses `name[:bitrate]`; without a bitrate, the name must be one of the default ladder's.
pub fn parse_rendition(text: &str) -> Result<RenditionSpec, SpecError> {
    let (name, bitrate) = match text.split_once(':') {
        Some((n, b)) => (
            n,
            Some(b.parse::<u64>().map_err(|source| SpecError::Bitrate {
                rendition: text.to_owned(),
                bitrate: b.to_owned(),
                source,
            })?),
        ),
        None => (text, None),
    };
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
    {
        return Err(SpecError::Name(name.to_owned()));
    }
    let bitrate = match bitrate {
        Some(b) => b,
        None => default_renditions()
            .into_iter()
            .find(|r| r.name == name)
            .map(|r| r.bitrate)
            .ok_or_else(|| SpecError::NoBitrate(name.to_owned()))?,
    };
    Ok(RenditionSpec {
        name: name.to_owned(),
        bitrate,
    })
}

impl CatalogSpec {
    /// A spec with the default ladder, 4-second segments and scale 1.
    pub fn new(titles: usize, segments: usize, seed: u64) -> CatalogSpec {
        CatalogSpec {
            titles,
            renditions: default_renditions(),
            segments,
            segment_secs: 4.0,
            scale: 1.0,
            seed,
        }
    }

    /// Checks the spec.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.titles > 10_000 {
            return Err(SpecError::TooManyTitles);
        }
        if self.segments > 10_000 {
            return Err(SpecError::TooManySegments);
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(SpecError::Scale(self.scale));
        }
        if !(self.segment_secs.is_finite() && self.segment_secs > 0.0) {
            return Err(SpecError::SegmentSecs(self.segment_secs));
        }
        for r in &self.renditions {
            parse_rendition(&format!("{}:{}", r.name, r.bitrate))?;
        }
        Ok(())
    }

    /// The size of one segment of `rendition`.
    pub fn segment_size(&self, rendition: &RenditionSpec) -> u64 {
        ((rendition.bitrate as f64 * self.segment_secs / 8.0 * self.scale).round() as u64).max(1)
    }
}

/// The content id of a segment.
pub fn object_id(title: usize, rendition: &str, segment: usize) -> String {
    format!("t{title:04}-{rendition}-{segment:04}.m4s")
}

/// The title id.
pub fn title_id(title: usize) -> String {
    format!("t{title:04}")
}

/// The deterministic content of object `id` of `size` bytes under `seed`.
pub fn object_content(seed: u64, id: &str, size: u64) -> Bytes {
    let mut h = Sha256::new();
    h.update(seed.to_be_bytes());
    h.update(id.as_bytes());
    let digest = h.finalize();
    let mut x = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) | 1;
    let mut out = Vec::with_capacity(size as usize + 8);
    while (out.len() as u64) < size {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(size as usize);
    Bytes::from(out)
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The catalog for `spec` (content is generated to hash it, one object at a time).
pub fn catalog_of(spec: &CatalogSpec) -> Catalog {
    let titles = (0..spec.titles)
        .map(|t| Title {
            id: title_id(t),
            renditions: spec
                .renditions
                .iter()
                .map(|r| {
                    let size = spec.segment_size(r);
                    Rendition {
                        name: r.name.clone(),
                        bitrate: r.bitrate,
                        objects: (0..spec.segments)
                            .map(|s| {
                                let id = object_id(t, &r.name, s);
                                let data = object_content(spec.seed, &id, size);
                                ObjectInfo {
                                    sha256: sha256_hex(&data),
                                    size,
                                    id,
                                }
                            })
                            .collect(),
                    }
                })
                .collect(),
        })
        .collect();
    Catalog { titles }
}

/// The catalog and every object's content (for small catalogs: all of it is in memory).
pub fn generate_catalog(spec: &CatalogSpec) -> (Catalog, Vec<(String, Bytes)>) {
    let catalog = catalog_of(spec);
    let objects = catalog
        .titles
        .iter()
        .flat_map(|t| t.renditions.iter().flat_map(|r| r.objects.iter()))
        .map(|o| (o.id.clone(), object_content(spec.seed, &o.id, o.size)))
        .collect();
    (catalog, objects)
}

/// Puts `objects` at the origin (key = content id), at most `concurrency` at a time.
pub async fn upload(
    store: Arc<dyn ObjectStore>,
    objects: Vec<(String, Bytes)>,
    concurrency: usize,
) -> Result<(), object_store::Error> {
    stream::iter(objects)
        .map(|(id, data)| {
            let store = store.clone();
            async move {
                store
                    .put(&Path::from(id.as_str()), PutPayload::from_bytes(data))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<()>()
        .await
}

/// Generates and puts every object of `catalog` (made from `seed`) at the origin, at most
/// `concurrency` at a time, holding only those in flight in memory.
pub async fn upload_catalog(
    store: Arc<dyn ObjectStore>,
    catalog: &Catalog,
    seed: u64,
    concurrency: usize,
) -> Result<u64, object_store::Error> {
    let objects: Vec<(String, u64)> = catalog
        .titles
        .iter()
        .flat_map(|t| t.renditions.iter().flat_map(|r| r.objects.iter()))
        .map(|o| (o.id.clone(), o.size))
        .collect();
    let n = objects.len() as u64;
    stream::iter(objects)
        .map(|(id, size)| {
            let store = store.clone();
            async move {
                let data = object_content(seed, &id, size);
                store
                    .put(&Path::from(id.as_str()), PutPayload::from_bytes(data))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<()>()
        .await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::state::{valid_object_id, validate_catalog};

    #[test]
    fn deterministic_and_valid() {
        let mut spec = CatalogSpec::new(3, 2, 42);
        spec.scale = 0.001;
        let (a, objs) = generate_catalog(&spec);
        let (b, _) = generate_catalog(&spec);
        assert_eq!(a, b);
        validate_catalog(&a).unwrap();
        assert_eq!(a.titles.len(), 3);
        assert_eq!(objs.len(), 3 * 4 * 2);
        let r = &a.titles[0].renditions[2];
        assert_eq!(r.name, "720p");
        // 3 Mb/s × 4 s / 8 × 0.001 = 1500 bytes.
        assert_eq!(r.objects[1].size, 1500);
        assert_eq!(r.objects[1].id, "t0000-720p-0001.m4s");
        assert!(objs.iter().all(|(id, _)| valid_object_id(id)));
        for (id, data) in &objs {
            let info = a
                .titles
                .iter()
                .flat_map(|t| t.renditions.iter().flat_map(|r| r.objects.iter()))
                .find(|o| &o.id == id)
                .unwrap();
            assert_eq!(data.len() as u64, info.size);
            assert_eq!(sha256_hex(data), info.sha256);
        }
        // Another seed, other content.
        spec.seed = 43;
        let (c, _) = generate_catalog(&spec);
        assert_ne!(
            a.titles[0].renditions[0].objects[0].sha256,
            c.titles[0].renditions[0].objects[0].sha256
        );
        // Distinct objects have distinct content.
        assert_ne!(objs[0].1, objs[1].1);
    }

    #[test]
    fn renditions_parse() {
        assert_eq!(
            parse_rendition("720p").unwrap(),
            RenditionSpec {
                name: "720p".into(),
                bitrate: 3_000_000
            }
        );
        assert_eq!(parse_rendition("4k:16000000").unwrap().bitrate, 16_000_000);
        assert!(parse_rendition("4k")
            .unwrap_err()
            .to_string()
            .contains("bitrate"));
        assert!(parse_rendition("a/b:1").is_err());
        assert!(parse_rendition("x:y")
            .unwrap_err()
            .to_string()
            .contains("not a number"));
        let mut spec = CatalogSpec::new(1, 1, 0);
        spec.scale = 0.0;
        assert!(spec.validate().is_err());
        spec.scale = 1e-9;
        assert_eq!(spec.segment_size(&default_renditions()[0]), 1);
    }
}
