//! The HTTP API: a thin axum layer over [`CloudState`]. Routes as in the table in
//! [`edgeplane_api`]; errors are a status code and an [`ApiError`] body.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use object_store::aws::AmazonS3;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::cloud::clock::Clock;
use crate::cloud::config::CloudConfig;
use crate::cloud::origin;
use crate::cloud::state::{CloudState, StateError};
use crate::cloud::store::{Store, StoreError};
use edgeplane_api::{ApiError, Catalog, HealthReport, Registration};
use edgeplane_signing::Reject;

/// Largest request body (a catalog or a health report listing many objects).
pub const MAX_BODY: usize = 64 << 20;

/// What the handlers share.
pub struct App {
    state: Mutex<CloudState>,
    origin: Arc<AmazonS3>,
    url_ttl: Duration,
    public_url: Option<String>,
    listen: SocketAddr,
}

impl App {
    /// The state on the store `cfg.store` names (default: SQLite in `cfg.state_dir`), with
    /// the S3 origin client built from `cfg.origin`. Blocking (opens and migrates the store).
    pub fn new(cfg: CloudConfig, clock: Arc<dyn Clock>) -> Result<App, StartError> {
        let origin = Arc::new(origin::build_store(&cfg.origin)?);
        let url_ttl = Duration::from_secs(cfg.signing.url_ttl_secs);
        let store = Arc::new(Store::open(cfg.store.url.as_deref(), &cfg.state_dir)?);
        let public_url = cfg.steering.public_url.clone();
        let listen = cfg.listen;
        let state = CloudState::open(cfg, clock, store).map_err(StartError::State)?;
        Ok(App {
            state: Mutex::new(state),
            origin,
            url_ttl,
            public_url,
            listen,
        })
    }

    /// The state, locked. A panic while it was held leaves it usable (every operation leaves it
    /// consistent before it can panic).
    pub fn state(&self) -> MutexGuard<'_, CloudState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The origin client.
    pub fn origin(&self) -> &Arc<AmazonS3> {
        &self.origin
    }
}

/// An error answer.
#[derive(Debug)]
pub struct Fail(pub StatusCode, pub String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

impl From<StateError> for Fail {
    fn from(e: StateError) -> Fail {
        let code = match &e {
            StateError::NotFound(_) => StatusCode::NOT_FOUND,
            StateError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            StateError::BadRequest(_) => StatusCode::BAD_REQUEST,
            StateError::Conflict(_) => StatusCode::CONFLICT,
            StateError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            StateError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Fail(code, e.to_string())
    }
}

/// Runs `f` on the state, synced with the store first, on a blocking thread (the store's calls
/// block).
pub(crate) async fn with_state<R: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&mut CloudState) -> Result<R, Fail> + Send + 'static,
) -> Result<R, Fail> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || {
        let mut st = app.state();
        st.sync()?;
        f(&mut st)
    })
    .await
    .map_err(|e| {
        Fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("state task: {e}"),
        )
    })?
}

/// Runs `f` on the state for a request that writes nothing to the store (steering, content
/// steering, play manifests). When the state is free and no store read is due
/// ([`CloudState::store_due`]: `[store] sync_interval_ms`), `f` runs at once on this task, from
/// memory: no blocking thread, no query. Otherwise as [`with_state`].
pub(crate) async fn with_read_state<R: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&mut CloudState) -> Result<R, Fail> + Send + 'static,
) -> Result<R, Fail> {
    match from_memory(app, f) {
        Ok(answer) => answer,
        Err(f) => with_state(app, f).await,
    }
}

/// `f` on the state if it is free and no store read is due; else `f` back.
fn from_memory<R, F: FnOnce(&mut CloudState) -> Result<R, Fail>>(
    app: &App,
    f: F,
) -> Result<Result<R, Fail>, F> {
    let mut st = match app.state.try_lock() {
        Ok(st) => st,
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        // A write (or a sync) holds it, perhaps for a store round trip: wait on a blocking
        // thread, not on this one.
        Err(TryLockError::WouldBlock) => return Err(f),
    };
    if st.store_due() {
        return Err(f);
    }
    Ok(f(&mut st))
}

pub(crate) fn bad(msg: impl Into<String>) -> Fail {
    Fail(StatusCode::BAD_REQUEST, msg.into())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, Fail> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

/// The router over `app`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/appliances/{id}/register", post(register))
        .route("/v1/appliances/{id}/health", post(health))
        .route("/v1/appliances/{id}/manifest", get(manifest))
        .route("/v1/appliances/{id}/held", get(held))
        .route("/v1/steering", get(steering))
        .route("/v1/origin/tok/{token}/{id}", get(origin_redirect))
        .route("/v1/fleet", get(fleet))
        .route("/v1/catalog", put(put_catalog).get(get_catalog))
        .route("/v1/keys/rotate", post(rotate))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(crate::cloud::content_steering::routes())
        .fallback(|| async { Fail(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            Fail(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint".into(),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

async fn register(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, Fail> {
    let token = bearer(&headers).map(str::to_owned);
    let ack = with_state(&app, move |st| {
        st.authenticate(&id, token.as_deref())?;
        let reg: Registration = json_body(&body)?;
        Ok(st.register(&id, reg)?)
    })
    .await?;
    Ok(Json(ack))
}

async fn health(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, Fail> {
    let token = bearer(&headers).map(str::to_owned);
    let bytes = body.len() as u64;
    let ack = with_state(&app, move |st| {
        st.authenticate(&id, token.as_deref())?;
        let report: HealthReport = json_body(&body)?;
        let ack = st.health(&id, report)?;
        st.counters.health_report_bytes += bytes;
        Ok(ack)
    })
    .await?;
    Ok(Json(ack))
}

async fn held(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, Fail> {
    let token = bearer(&headers).map(str::to_owned);
    let held = with_state(&app, move |st| {
        st.authenticate_admin(token.as_deref())?;
        Ok(st.held(&id)?)
    })
    .await?;
    Ok(Json(held))
}

async fn manifest(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, Fail> {
    let token = bearer(&headers).map(str::to_owned);
    let m = with_state(&app, move |st| {
        st.authenticate(&id, token.as_deref())?;
        Ok(st.manifest(&id)?)
    })
    .await?;
    Ok(Json(m))
}

/// `client` and `title` from the query string; `client` defaults to the peer address.
fn steering_params(query: Option<&str>, peer: IpAddr) -> Result<(IpAddr, String), Fail> {
    let mut client = None;
    let mut title = None;
    for (k, v) in form_pairs(query.unwrap_or("")) {
        match k.as_str() {
            "client" => {
                let ip: IpAddr = v.parse().map_err(|_| {
                    bad(format!("query parameter client={v:?} is not an IP address"))
                })?;
                client = Some(ip);
            }
            "title" => title = Some(v),
            other => return Err(bad(format!("unknown query parameter {other:?}"))),
        }
    }
    let title = title
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("missing query parameter title"))?;
    Ok((client.unwrap_or(peer), title))
}

/// Splits `a=b&c=d`, percent-decoding (`+` is a space).
pub(crate) fn form_pairs(query: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = |c: u8| (c as char).to_digit(16);
                    match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                        (Some(h), Some(l)) => {
                            out.push((h * 16 + l) as u8);
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

async fn steering(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, Fail> {
    let (client, title) = match steering_params(query.as_deref(), peer.ip()) {
        Ok(p) => p,
        Err(e) => {
            app.state().count_steering("bad_request");
            return Err(e);
        }
    };
    let origin_base = format!("{}/v1/origin", public_url(&app, &headers));
    let answer = with_read_state(&app, move |st| {
        Ok(st.steer(client, &title, &origin_base)?)
    })
    .await?;
    Ok(Json(answer))
}

/// The control service's URL as players reach it (steering's origin location, the content
/// steering manifests): `steering.public_url`, else `http://` + the request's `Host`, else its
/// listen address.
pub(crate) fn public_url(app: &App, headers: &HeaderMap) -> String {
    base_url(app.public_url.as_deref(), headers, app.listen)
}

/// [`public_url`] from its parts. A `Host` is used only when it is a plain `host[:port]`
/// (letters, digits, `.-:[]`): it is written into manifests and answers, never reflected as
/// anything else.
fn base_url(configured: Option<&str>, headers: &HeaderMap, listen: SocketAddr) -> String {
    if let Some(u) = configured {
        return u.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| listen.to_string());
    format!("http://{host}")
}

/// Checks a per-title token for object `id` from `client`, as an appliance does: 403 when
/// refused. With the keys this instance holds; a key it does not know yet (rotated through
/// another instance) makes it read the store once and check again.
pub(crate) async fn check_title_token(
    app: &Arc<App>,
    token: String,
    id: String,
    client: IpAddr,
) -> Result<(), Fail> {
    let refused = |why: Reject| Fail(StatusCode::FORBIDDEN, format!("token refused: {why}"));
    let first = {
        let st = app.state();
        st.keys().verify_title(&id, &token, client, st.now())
    };
    match first {
        Err(Reject::UnknownKey) => {
            with_state(app, move |st| {
                st.keys()
                    .verify_title(&id, &token, client, st.now())
                    .map_err(refused)
            })
            .await
        }
        other => other.map_err(refused),
    }
}

/// `GET /v1/origin/tok/{token}/{id}`: the origin location of a steering answer. Checks the
/// per-title token as an appliance does (same keys, same checks, the connection's address as
/// the client) and redirects (302) to a presigned GET of the object at the S3 origin.
async fn origin_redirect(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((token, id)): Path<(String, String)>,
) -> Result<Response, Fail> {
    if !edgeplane_api::valid_content_id(&id) {
        return Err(Fail(StatusCode::NOT_FOUND, format!("no object {id:?}")));
    }
    check_title_token(&app, token, id.clone(), peer.ip()).await?;
    let urls = origin::presign(&app.origin, std::slice::from_ref(&id), app.url_ttl)
        .await
        .map_err(|e| {
            Fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("presigning the origin URL: {e}"),
            )
        })?;
    let url = urls.get(&id).cloned().unwrap_or_default();
    Ok((
        StatusCode::FOUND,
        [
            (header::LOCATION, url),
            (header::CACHE_CONTROL, "no-store".into()),
        ],
    )
        .into_response())
}

async fn fleet(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<impl IntoResponse, Fail> {
    let token = bearer(&headers).map(str::to_owned);
    let fleet = with_state(&app, move |st| {
        st.authenticate_admin(token.as_deref())?;
        Ok(st.fleet())
    })
    .await?;
    Ok(Json(fleet))
}

async fn put_catalog(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, Fail> {
    let token = bearer(&headers).map(str::to_owned);
    with_state(&app, move |st| {
        st.authenticate_admin(token.as_deref())?;
        let catalog: Catalog = json_body(&body)?;
        Ok(st.set_catalog(catalog)?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_catalog(State(app): State<Arc<App>>) -> Result<impl IntoResponse, Fail> {
    let catalog = with_state(&app, |st| Ok(st.catalog().clone())).await?;
    Ok(Json(catalog))
}

async fn rotate(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, Fail> {
    let token = bearer(&headers).map(str::to_owned);
    let keys = with_state(&app, move |st| {
        st.authenticate_admin(token.as_deref())?;
        Ok(st.rotate_keys()?)
    })
    .await?;
    Ok(Json(keys))
}

async fn metrics(State(app): State<Arc<App>>) -> Result<impl IntoResponse, Fail> {
    let text = with_state(&app, |st| Ok(st.metrics_text())).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The origin client could not be built.
    #[error("origin: {0}")]
    Origin(#[from] object_store::Error),
    /// The store could not be opened or migrated (or is newer than this binary).
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The stored state could not be loaded.
    #[error("{0}")]
    State(#[source] StateError),
    /// The listen address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// A running service.
pub struct Running {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The shared state (tests may inspect it).
    pub app: Arc<App>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, and waits for the server to end.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// Starts the service on `cfg.listen` with `clock`, on the current tokio runtime.
pub async fn start(cfg: CloudConfig, clock: Arc<dyn Clock>) -> Result<Running, StartError> {
    let addr = cfg.listen;
    let app = Arc::new(
        tokio::task::spawn_blocking(move || App::new(cfg, clock))
            .await
            .map_err(|e| {
                StartError::State(StateError::Internal(format!("opening the store: {e}")))
            })??,
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let (tx, rx) = oneshot::channel::<()>();
    let service = router(app.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let task = tokio::spawn(async move {
        axum::serve(listener, service)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
    });
    Ok(Running {
        addr: bound,
        app,
        shutdown: Some(tx),
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_is_the_configured_one_else_a_plain_host_else_the_listen_address() {
        let local: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(base_url(None, &h, local), "http://127.0.0.1:9");
        h.insert(header::HOST, "ctl.example:8700".parse().unwrap());
        assert_eq!(base_url(None, &h, local), "http://ctl.example:8700");
        assert_eq!(
            base_url(Some("https://control.example/"), &h, local),
            "https://control.example"
        );
        h.insert(header::HOST, "evil\"host".parse().unwrap());
        assert_eq!(base_url(None, &h, local), "http://127.0.0.1:9");
    }

    #[test]
    fn steering_query() {
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let (c, t) = steering_params(Some("client=10.0.0.1&title=t0001"), peer).unwrap();
        assert_eq!((c.to_string().as_str(), t.as_str()), ("10.0.0.1", "t0001"));
        let (c, _) = steering_params(Some("title=t%30001"), peer).unwrap();
        assert_eq!(c, peer);
        let (c, _) = steering_params(Some("client=2001%3Adb8%3A%3A1&title=x"), peer).unwrap();
        assert_eq!(c.to_string(), "2001:db8::1");
        let e = steering_params(Some("client=nope&title=x"), peer).unwrap_err();
        assert!(e.1.contains("client"), "{}", e.1);
        let e = steering_params(Some("client=10.0.0.1"), peer).unwrap_err();
        assert!(e.1.contains("title"), "{}", e.1);
        assert!(steering_params(None, peer).is_err());
        assert!(steering_params(Some("title=x&foo=1"), peer)
            .unwrap_err()
            .1
            .contains("foo"));
        // A stray percent sign is kept.
        assert_eq!(form_pairs("a=%zz&b=%4")[0].1, "%zz");
        assert_eq!(form_pairs("a=%zz&b=%4")[1].1, "%4");
    }

    #[test]
    fn bearer_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
