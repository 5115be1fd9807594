//! Standard content steering (DASH-IF Content Steering and HLS Content Steering, one JSON
//! format) and what the players load around it. docs/control-api.md, "Players", has an example
//! exchange.
//!
//! * `GET /v1/play/<title>.mpd` and `GET /v1/play/<title>.m3u8` (`?client=IP` optional; default
//!   the peer): the title's manifest for this client, naming one pathway per location steering
//!   ranks for it ([`rank_appliances`]: embedded appliances covering the client, the IX
//!   appliances, at most `steering.max_locations - 1`), then `origin` (this service). Every
//!   pathway's base URL is `<base>/tok/<token>/`, `<token>` the per-title token
//!   ([`sign_title`]) for the title's id-prefix `<title>-` and the client's prefix, so the
//!   relative segment URLs resolve to `/tok/<token>/<content-id>` on every pathway. DASH: one
//!   `BaseURL serviceLocation=…` per pathway and `ContentSteering`; HLS: one variant set per
//!   `PATHWAY-ID` and `#EXT-X-CONTENT-STEERING`.
//! * `GET /v1/content-steering?title=T[&client=IP][&pathways=a,b]` plus whatever the player
//!   adds (`_DASH_pathway`, `_DASH_throughput`, `_HLS_pathway`, `_HLS_throughput`): the
//!   steering manifest `{"VERSION":1,"TTL":…,"RELOAD-URI":…,"PATHWAY-PRIORITY":[…],
//!   "PATHWAY-CLONES":[…]}`. The priority is the current ranking, so a player that reloads
//!   every `TTL` seconds follows drains, deaths and load without restarting. Appliances that
//!   rank now but are not among `pathways` (the ones the manifest named) come as clones of
//!   `origin` with their host.
//! * `GET /tok/<token>/<content-id>`: the origin pathway. The token is checked like the
//!   appliances check it (403 otherwise); the object comes from the S3 origin.
//!
//! Every answer carries `Access-Control-Allow-Origin: *` (the player page may be served from
//! elsewhere; the appliances send it too, `[http] cors`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use object_store::ObjectStoreExt;
use serde::Serialize;

use crate::cloud::media::{self, Pathway};
use crate::cloud::server::{
    bad, check_title_token, form_pairs, public_url, with_read_state, App, Fail,
};
use crate::cloud::state::{valid_object_id, CloudState};
use crate::cloud::steering::canonical;
use edgeplane_api::Title;
use edgeplane_signing::{client_prefix, sign_title};

/// The origin's pathway id.
pub const ORIGIN: &str = "origin";

/// The routes of this module (merged into [`crate::cloud::server::router`]).
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/play/{file}", get(play_manifest))
        .route("/v1/content-steering", get(content_steering))
        .route("/tok/{token}/{id}", get(origin_object))
        .route("/player", get(crate::cloud::player::page))
        .route("/player/assets/{file}", get(crate::cloud::player::asset))
}

/// The steering manifest (field names as the DASH-IF and HLS specifications spell them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SteeringManifest {
    /// Always 1.
    #[serde(rename = "VERSION")]
    pub version: u32,
    /// Seconds until the player should ask again.
    #[serde(rename = "TTL")]
    pub ttl: u64,
    /// Where to ask next time.
    #[serde(rename = "RELOAD-URI")]
    pub reload_uri: String,
    /// Pathway ids, best first.
    #[serde(rename = "PATHWAY-PRIORITY")]
    pub pathway_priority: Vec<String>,
    /// Pathways the manifest did not name, as copies of another with a new host.
    #[serde(rename = "PATHWAY-CLONES")]
    pub pathway_clones: Vec<PathwayClone>,
}

/// One `PATHWAY-CLONES` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PathwayClone {
    /// The pathway copied.
    #[serde(rename = "BASE-ID")]
    pub base_id: String,
    /// The new pathway's id.
    #[serde(rename = "ID")]
    pub id: String,
    /// What changes.
    #[serde(rename = "URI-REPLACEMENT")]
    pub uri_replacement: UriReplacement,
}

/// `URI-REPLACEMENT`: the host (with its port) replaces the base pathway's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UriReplacement {
    /// `host[:port]`.
    #[serde(rename = "HOST")]
    pub host: String,
}

/// A steering request's parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SteeringQuery {
    /// The title.
    pub title: String,
    /// The client, when given (else the peer).
    pub client: Option<IpAddr>,
    /// The pathways the manifest named (`pathways=a,b`), when given.
    pub known: Option<Vec<String>>,
    /// The pathway the player is on (`_DASH_pathway` / `_HLS_pathway`).
    pub current: Option<String>,
    /// The player's throughput estimate, bits/s (`_DASH_throughput` / `_HLS_throughput`).
    pub throughput: Option<u64>,
}

fn valid_pathway(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 200
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses a steering query; anything unknown or malformed is an error (400).
pub fn parse_steering_query(query: Option<&str>) -> Result<SteeringQuery, String> {
    let mut q = SteeringQuery::default();
    let mut title = None;
    for (k, v) in form_pairs(query.unwrap_or("")) {
        match k.as_str() {
            "title" => title = Some(v),
            "client" => {
                q.client =
                    Some(v.parse().map_err(|_| {
                        format!("query parameter client={v:?} is not an IP address")
                    })?)
            }
            "pathways" => {
                let list: Vec<String> = v.split(',').map(str::to_owned).collect();
                if let Some(p) = list.iter().find(|p| !valid_pathway(p)) {
                    return Err(format!("query parameter pathways: bad pathway id {p:?}"));
                }
                q.known = Some(list);
            }
            "_DASH_pathway" | "_HLS_pathway" => {
                // The DASH-IF player quotes it.
                let p = v.trim_matches('"');
                if !valid_pathway(p) {
                    return Err(format!("query parameter {k}: bad pathway id {v:?}"));
                }
                q.current = Some(p.to_owned());
            }
            "_DASH_throughput" | "_HLS_throughput" => {
                let t: f64 = v
                    .parse()
                    .map_err(|_| format!("query parameter {k}={v:?} is not a number"))?;
                if !t.is_finite() || t < 0.0 {
                    return Err(format!("query parameter {k}={v:?} is not a throughput"));
                }
                q.throughput = Some(t as u64);
            }
            other => return Err(format!("unknown query parameter {other:?}")),
        }
    }
    q.title = title
        .filter(|t| !t.is_empty())
        .ok_or("missing query parameter title")?;
    Ok(q)
}

/// The pathways for `client` and `title`, best first, origin last: (id, base URL without the
/// token path). `origin_base` is this service's URL. The ranking is steering's own
/// ([`CloudState::steer`]: embedded appliances covering the client, spread by rendezvous
/// hashing, then IX appliances by site, at most `steering.max_locations - 1`). `new_viewer`:
/// the manifest starts a viewer (its load counts, as for a `/v1/steering` answer); a steering
/// reload re-ranks one already playing.
pub fn ranked_pathways(
    st: &mut CloudState,
    title: &Title,
    client: IpAddr,
    origin_base: &str,
    new_viewer: bool,
) -> Result<Vec<(String, String)>, Fail> {
    let answer = st.steer_as(client, &title.id, "", new_viewer)?;
    Ok(answer
        .locations
        .iter()
        .filter_map(|l| {
            let id = l.appliance.clone()?;
            let base = l.base_url.split("/tok/").next()?.trim_end_matches('/');
            Some((id, base.to_owned()))
        })
        .chain(std::iter::once((
            ORIGIN.to_owned(),
            origin_base.trim_end_matches('/').to_owned(),
        )))
        .collect())
}

/// The per-title token for `client` (valid `signing.url_ttl_secs`).
fn title_token(st: &CloudState, title: &Title, client: IpAddr) -> Result<String, Fail> {
    let now = st.now();
    let key = st.keys().signing_key(now).ok_or_else(|| {
        Fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no valid signing key".into(),
        )
    })?;
    let s = &st.config().signing;
    let prefix = client_prefix(canonical(client), s.v4_prefix_len, s.v6_prefix_len);
    Ok(sign_title(
        key,
        &format!("{}-", title.id),
        now + s.url_ttl_secs,
        prefix,
    ))
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The steering URI a manifest names.
fn steering_uri(base: &str, title: &str, client: Option<IpAddr>, known: &[String]) -> String {
    let mut u = format!("{base}/v1/content-steering?title={}", enc(title));
    if let Some(c) = client {
        u.push_str(&format!("&client={}", enc(&c.to_string())));
    }
    u.push_str(&format!("&pathways={}", enc(&known.join(","))));
    u
}

fn cors(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

fn find_title(st: &CloudState, id: &str) -> Result<Title, Fail> {
    st.catalog()
        .titles
        .iter()
        .find(|t| t.id == id)
        .cloned()
        .ok_or_else(|| Fail(StatusCode::NOT_FOUND, format!("unknown title {id:?}")))
}

/// The manifest's client: `?client=IP` or the peer.
fn play_client(query: Option<&str>) -> Result<Option<IpAddr>, Fail> {
    let mut client = None;
    for (k, v) in form_pairs(query.unwrap_or("")) {
        match k.as_str() {
            "client" => {
                client = Some(v.parse().map_err(|_| {
                    bad(format!("query parameter client={v:?} is not an IP address"))
                })?)
            }
            other => return Err(bad(format!("unknown query parameter {other:?}"))),
        }
    }
    Ok(client)
}

async fn play_manifest(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(file): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, Fail> {
    let (id, dash) = if let Some(t) = file.strip_suffix(".mpd") {
        (t, true)
    } else if let Some(t) = file.strip_suffix(".m3u8") {
        (t, false)
    } else {
        return Err(bad(format!(
            "{file:?}: ask for <title>.mpd (DASH) or <title>.m3u8 (HLS)"
        )));
    };
    let given = play_client(query.as_deref())?;
    let client = given.unwrap_or(peer.ip());
    let base = public_url(&app, &headers);
    let (id, origin_base) = (id.to_owned(), base.clone());
    let (title, token, ranked) = with_read_state(&app, move |st| {
        let title = find_title(st, &id)?;
        media::playable(&title).map_err(|e| Fail(StatusCode::CONFLICT, e))?;
        let token = title_token(st, &title, client)?;
        let ranked = ranked_pathways(st, &title, client, &origin_base, true)?;
        Ok((title, token, ranked))
    })
    .await?;
    let known: Vec<String> = ranked.iter().map(|(id, _)| id.clone()).collect();
    let pathways: Vec<Pathway> = ranked
        .into_iter()
        .map(|(id, b)| Pathway {
            id,
            base: format!("{b}/tok/{token}/"),
        })
        .collect();
    let uri = steering_uri(&base, &title.id, given, &known);
    let (body, ctype) = if dash {
        (
            media::dash_mpd(&title, &pathways, Some(&uri)),
            "application/dash+xml",
        )
    } else {
        (
            media::hls_multivariant(&title, &pathways, Some(&uri)),
            "application/vnd.apple.mpegurl",
        )
    };
    let body = body.map_err(|e| Fail(StatusCode::CONFLICT, e))?;
    Ok(cors(
        (
            [
                (header::CONTENT_TYPE, ctype),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
    ))
}

/// The steering manifest for a parsed query.
pub fn steering_manifest(
    st: &mut CloudState,
    q: &SteeringQuery,
    client: IpAddr,
    base: &str,
) -> Result<SteeringManifest, Fail> {
    let title = find_title(st, &q.title)?;
    let ranked = ranked_pathways(st, &title, client, base, false)?;
    let priority: Vec<String> = ranked.iter().map(|(id, _)| id.clone()).collect();
    let clones = match &q.known {
        Some(known) => ranked
            .iter()
            .filter(|(id, _)| !known.contains(id))
            .filter_map(|(id, url)| {
                let host = url.split_once("://")?.1.split('/').next()?.to_owned();
                Some(PathwayClone {
                    base_id: ORIGIN.to_owned(),
                    id: id.clone(),
                    uri_replacement: UriReplacement { host },
                })
            })
            .collect(),
        None => Vec::new(),
    };
    let mut known = q.known.clone().unwrap_or_default();
    for c in &clones {
        known.push(c.id.clone());
    }
    Ok(SteeringManifest {
        version: 1,
        ttl: st.config().steering.reload_secs,
        reload_uri: steering_uri(base, &title.id, q.client, &known),
        pathway_priority: priority,
        pathway_clones: clones,
    })
}

async fn content_steering(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, Fail> {
    let q = parse_steering_query(query.as_deref()).map_err(bad)?;
    let client = q.client.unwrap_or(peer.ip());
    let base = public_url(&app, &headers);
    let m = with_read_state(&app, move |st| steering_manifest(st, &q, client, &base)).await?;
    Ok(cors(
        ([(header::CACHE_CONTROL, "no-store")], axum::Json(m)).into_response(),
    ))
}

/// The content type of an object, by its name.
pub fn content_type(id: &str) -> &'static str {
    match id.rsplit('.').next() {
        Some("mp4") => "video/mp4",
        Some("m4s") => "video/iso.segment",
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("mpd") => "application/dash+xml",
        _ => "application/octet-stream",
    }
}

async fn origin_object(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((token, id)): Path<(String, String)>,
) -> Result<Response, Fail> {
    if !valid_object_id(&id) {
        return Err(bad(format!("{id:?} is not a content id")));
    }
    check_title_token(&app, token, id.clone(), peer.ip()).await?;
    let store = app.origin().clone();
    let got = store
        .get(&object_store::path::Path::from(id.as_str()))
        .await;
    let bytes = match got {
        Ok(r) => r.bytes().await,
        Err(e) => Err(e),
    };
    match bytes {
        Ok(b) => Ok(cors(
            ([(header::CONTENT_TYPE, content_type(&id))], b).into_response(),
        )),
        Err(object_store::Error::NotFound { .. }) => Err(Fail(
            StatusCode::NOT_FOUND,
            format!("{id:?} is not at the origin"),
        )),
        Err(e) => Err(Fail(StatusCode::BAD_GATEWAY, format!("origin: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parses_player_parameters_and_refuses_the_rest() {
        let q = parse_steering_query(Some(
            "title=t0001&client=10.0.0.1&pathways=emb,origin&_DASH_pathway=%22emb%22&_DASH_throughput=123456.7",
        ))
        .unwrap();
        assert_eq!(q.title, "t0001");
        assert_eq!(q.client, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(
            q.known.as_deref(),
            Some(&["emb".to_owned(), "origin".to_owned()][..])
        );
        assert_eq!(q.current.as_deref(), Some("emb"));
        assert_eq!(q.throughput, Some(123456));
        let q = parse_steering_query(Some("title=t&_HLS_pathway=ix&_HLS_throughput=5")).unwrap();
        assert_eq!((q.current.as_deref(), q.throughput), (Some("ix"), Some(5)));
        for (bad, needle) in [
            ("", "title"),
            ("title=", "title"),
            ("title=t&client=x", "client"),
            ("title=t&x=1", "\"x\""),
            ("title=t&_DASH_throughput=fast", "number"),
            ("title=t&_DASH_throughput=-1", "throughput"),
            ("title=t&_HLS_pathway=a%3Cb", "pathway"),
            ("title=t&pathways=a,,b", "pathways"),
        ] {
            let e = parse_steering_query(Some(bad)).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn manifest_json_uses_the_specified_names() {
        let m = SteeringManifest {
            version: 1,
            ttl: 10,
            reload_uri: "http://c/v1/content-steering?title=t".into(),
            pathway_priority: vec!["emb".into(), ORIGIN.into()],
            pathway_clones: vec![PathwayClone {
                base_id: ORIGIN.into(),
                id: "ix2".into(),
                uri_replacement: UriReplacement {
                    host: "192.0.2.9:8080".into(),
                },
            }],
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"VERSION":1,"TTL":10,"RELOAD-URI":"http://c/v1/content-steering?title=t","PATHWAY-PRIORITY":["emb","origin"],"PATHWAY-CLONES":[{"BASE-ID":"origin","ID":"ix2","URI-REPLACEMENT":{"HOST":"192.0.2.9:8080"}}]}"#
        );
    }

    #[test]
    fn uris_and_hosts() {
        let u = steering_uri(
            "http://h:1",
            "t0001",
            Some("2001:db8::1".parse().unwrap()),
            &["a".into(), "origin".into()],
        );
        assert_eq!(
            u,
            "http://h:1/v1/content-steering?title=t0001&client=2001%3Adb8%3A%3A1&pathways=a%2Corigin"
        );
        assert_eq!(content_type("t-1-init.mp4"), "video/mp4");
        assert_eq!(content_type("t.mpd"), "application/dash+xml");
    }
}
