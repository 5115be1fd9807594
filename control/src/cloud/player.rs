//! The player page: `GET /player?title=T&player=dashjs|hlsjs` loads the title's steered
//! manifest (`/v1/play/T.mpd` or `.m3u8`) into dash.js or hls.js, served from
//! `steering.player_assets` (the npm packages scripts/setup.sh installs; never a CDN), and
//! records what a viewer would see in `window.ep`: start-up time, stalls (`waiting` →
//! `playing`), picture size changes (the bitrate climbing the ladder), player errors and the
//! bytes fetched per host. Both players keep about 8 s of buffer, so a pathway change shows
//! within seconds. `cargo xtask player-test` drives it in headless Chromium.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::cloud::server::{bad, form_pairs, App, Fail};

/// The scripts the page may load: URL name → path under `player_assets`.
pub const ASSETS: [(&str, &str); 2] = [
    ("dash.all.min.js", "dashjs/dist/modern/umd/dash.all.min.js"),
    ("hls.min.js", "hls.js/dist/hls.min.js"),
];

/// The players.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Player {
    /// dash.js on the DASH MPD.
    DashJs,
    /// hls.js on the HLS multivariant playlist.
    HlsJs,
}

/// `title`, `player` and `start` (`auto`, the default, or `manual`: the page waits for
/// `epStart(url)`, so a test can hand it another manifest) from the query; anything else is
/// refused.
pub fn page_query(query: Option<&str>) -> Result<(String, Player, bool), String> {
    let mut title = None;
    let mut player = None;
    let mut auto = true;
    for (k, v) in form_pairs(query.unwrap_or("")) {
        match k.as_str() {
            "title" => title = Some(v),
            "player" => {
                player = Some(match v.as_str() {
                    "dashjs" => Player::DashJs,
                    "hlsjs" => Player::HlsJs,
                    _ => return Err("query parameter player must be dashjs or hlsjs".into()),
                })
            }
            "start" => {
                auto = match v.as_str() {
                    "auto" => true,
                    "manual" => false,
                    _ => return Err("query parameter start must be auto or manual".into()),
                }
            }
            _ => return Err("unknown query parameter (title, player and start only)".into()),
        }
    }
    let title = title
        .filter(|t| !t.is_empty())
        .ok_or("missing query parameter title")?;
    Ok((title, player.ok_or("missing query parameter player")?, auto))
}

/// The page for a title known to exist (its id is a content-id-like name, but it is escaped
/// anyway: as a JSON string with `<`, `>` and `&` as `\u` escapes).
pub fn page_html(title: &str, player: Player, auto: bool) -> String {
    let js_title = serde_json::to_string(title)
        .unwrap_or_else(|_| "\"\"".into())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    let (script, kind) = match player {
        Player::DashJs => ("dash.all.min.js", "dashjs"),
        Player::HlsJs => ("hls.min.js", "hlsjs"),
    };
    PAGE.replace("@SCRIPT@", script)
        .replace("@PLAYER@", kind)
        .replace("@TITLE@", &js_title)
        .replace("@AUTO@", if auto { "true" } else { "false" })
}

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>edgeplane player</title>
<style>body{margin:0;background:#000}video{width:640px;height:360px;display:block}</style>
</head><body>
<video id="v" muted autoplay playsinline></video>
<script src="/player/assets/@SCRIPT@"></script>
<script>
"use strict";
const TITLE = @TITLE@;
const PLAYER = "@PLAYER@";
const v = document.getElementById("v");
const t0 = performance.now();
const now = () => (performance.now() - t0) / 1000;
const ep = window.ep = {
  player: PLAYER, title: TITLE, started: null, errors: [], stalls: [], waiting: null,
  sizes: [], bytes: {}, pathways: [], steering: []
};
const host = (u) => { try { return new URL(u, location.href).host; } catch (e) { return "?"; } };
const count = (u, n) => { const h = host(u); ep.bytes[h] = (ep.bytes[h] || 0) + (n || 0); };
v.addEventListener("playing", () => {
  if (ep.started === null) ep.started = now();
  if (ep.waiting !== null) { ep.stalls.push([ep.waiting, now() - ep.waiting]); ep.waiting = null; }
});
v.addEventListener("waiting", () => { if (ep.started !== null && ep.waiting === null) ep.waiting = now(); });
v.addEventListener("resize", () => ep.sizes.push([now(), v.videoWidth, v.videoHeight]));
v.addEventListener("error", () => ep.errors.push([now(), "video", String(v.error && v.error.message)]));
const AUTO = @AUTO@;
const DEFAULT = "/v1/play/" + encodeURIComponent(TITLE) + (PLAYER === "dashjs" ? ".mpd" : ".m3u8");
window.epStart = (src) => {
if (PLAYER === "dashjs") {
  const p = window.player = dashjs.MediaPlayer().create();
  p.updateSettings({ streaming: {
    applyContentSteering: true,
    buffer: { stableBufferTime: 8, bufferTimeAtTopQuality: 8, bufferTimeAtTopQualityLongForm: 8 },
    abr: { initialBitrate: { video: 100 }, autoSwitchBitrate: { video: true } },
    retryAttempts: { MediaSegment: 1, InitializationSegment: 1 },
    retryIntervals: { MediaSegment: 200, InitializationSegment: 200 }
  } });
  const E = dashjs.MediaPlayer.events;
  p.on(E.ERROR, (e) => ep.errors.push([now(), "dashjs", JSON.stringify(e.error || e).slice(0, 300)]));
  p.on(E.FRAGMENT_LOADING_COMPLETED, (e) => {
    const r = e.request || {};
    if (r.url && !e.error) count(r.url, r.bytesLoaded || 0);
  });
  if (E.CONTENT_STEERING_REQUEST_COMPLETED) {
    p.on(E.CONTENT_STEERING_REQUEST_COMPLETED, (e) => ep.steering.push([now(), JSON.stringify(e.currentSteeringResponseData || null)]));
  }
  p.initialize(v, src, true);
} else {
  const h = window.player = new Hls({ startLevel: 0, capLevelToPlayerSize: false,
    maxBufferLength: 8, maxMaxBufferLength: 10,
    fragLoadPolicy: { default: { maxTimeToFirstByteMs: 4000, maxLoadTimeMs: 8000,
      timeoutRetry: { maxNumRetry: 1, retryDelayMs: 0, maxRetryDelayMs: 0 },
      errorRetry: { maxNumRetry: 1, retryDelayMs: 200, maxRetryDelayMs: 200 } } } });
  h.on(Hls.Events.ERROR, (_, d) => ep.errors.push([now(), "hlsjs" + (d.fatal ? " fatal" : ""), d.details + " " + (d.response ? d.response.code : "")]));
  h.on(Hls.Events.FRAG_LOADED, (_, d) => count(d.frag.url, d.frag.stats.loaded));
  h.on(Hls.Events.STEERING_MANIFEST_LOADED, (_, d) => ep.steering.push([now(), JSON.stringify(d.steeringManifest || null)]));
  h.on(Hls.Events.LEVEL_SWITCHED, (_, d) => ep.pathways.push([now(), h.pathwayPriority ? h.pathwayPriority.join(",") : ""]));
  h.loadSource(src);
  h.attachMedia(v);
}
v.play().catch(() => {});
};
if (AUTO) window.epStart(DEFAULT);
</script>
</body></html>
"#;

/// `GET /player?title=T&player=dashjs|hlsjs`.
pub async fn page(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
) -> Result<Response, Fail> {
    let (title, player, auto) = page_query(query.as_deref()).map_err(bad)?;
    if !app.state().catalog().titles.iter().any(|t| t.id == title) {
        // Not echoed: the page never reflects what it did not find.
        return Err(Fail(StatusCode::NOT_FOUND, "unknown title".into()));
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page_html(&title, player, auto),
    )
        .into_response())
}

/// `GET /player/assets/<name>`: one of [`ASSETS`].
pub async fn asset(
    State(app): State<Arc<App>>,
    Path(file): Path<String>,
) -> Result<Response, Fail> {
    let Some((_, rel)) = ASSETS.iter().find(|(name, _)| *name == file) else {
        return Err(Fail(StatusCode::NOT_FOUND, "no such asset".into()));
    };
    let path = app.state().config().steering.player_assets.join(rel);
    match tokio::fs::read(&path).await {
        Ok(body) => Ok((
            [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
            body,
        )
            .into_response()),
        Err(e) => Err(Fail(
            StatusCode::NOT_FOUND,
            format!(
                "{}: {e} (scripts/setup.sh installs the players with npm)",
                path.display()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_escaping() {
        assert_eq!(
            page_query(Some("title=t0001&player=hlsjs")).unwrap(),
            ("t0001".into(), Player::HlsJs, true)
        );
        assert!(
            !page_query(Some("title=t&player=dashjs&start=manual"))
                .unwrap()
                .2
        );
        assert!(page_query(Some("title=t&player=dashjs&start=x")).is_err());
        assert!(page_query(Some("title=t0001&player=vlc"))
            .unwrap_err()
            .contains("dashjs or hlsjs"));
        assert!(page_query(Some("player=dashjs"))
            .unwrap_err()
            .contains("title"));
        assert!(page_query(Some("title=t")).unwrap_err().contains("player"));
        assert!(page_query(Some("title=t&player=dashjs&x=<b>"))
            .unwrap_err()
            .contains("unknown"));
        let html = page_html("</script><script>alert(1)</script>&", Player::DashJs, true);
        assert!(!html.contains("</script><script>alert"));
        assert!(html.contains(
            r#""\u003c/script\u003e\u003cscript\u003ealert(1)\u003c/script\u003e\u0026""#
        ));
        assert!(html.contains("/player/assets/dash.all.min.js"));
        assert!(page_html("t0001", Player::HlsJs, false).contains("const TITLE = \"t0001\";"));
    }
}
