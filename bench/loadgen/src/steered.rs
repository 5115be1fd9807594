//! The steered player (`--steering URL`): each viewer asks the control service's
//! `GET /v1/steering?title=T` where to play from, fetches whole segment objects from the first
//! location (`base_url` + the rendition's segment id), walks to the next location when a
//! request fails or times out, reloads the answer every `reload_s` seconds and follows it when
//! its ranking changed ([`crate::steer::Pathways`]). Per viewer it counts the buffer, stalls,
//! the time to recover from each outage and the bytes per location.
//!
//! Plain HTTP only (the locations of a steering answer on a test bed); one redirect is followed
//! (the origin location answers 302 to a presigned S3 URL).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgeplane_api::Steering;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{sleep, sleep_until, timeout, Instant};

use crate::http::{get_request, parse_get_head, GetHead};
use crate::player::{Abr, Playback};
use crate::run::{fail, read_head, record_bytes, Ctx, Io, PlayerConfig, SteeringConfig, Target};
use crate::stats::{ErrorKind, Stats, SteeredStats, ViewerStats};
use crate::steer::{answer_keys, ladder, segment_id, Move, Pathways};
use crate::zipf::{Rng, Zipf};

/// Read buffer per viewer (many viewers, small segments).
const BUF: usize = 16 << 10;
/// Pause after every location of an answer failed, before asking steering again.
const EXHAUSTED_PAUSE: Duration = Duration::from_millis(200);

/// One kept-alive connection of a viewer, to one address.
struct Conn {
    addr: SocketAddr,
    io: Box<dyn Io>,
}

/// Where one location's objects are: the address and the URL path before the id.
fn location_targets(answer: &Steering) -> Vec<Option<Target>> {
    answer
        .locations
        .iter()
        .map(|l| Target::parse(&l.base_url).ok().filter(|t| !t.tls))
        .collect()
}

/// The loopback address viewer `viewer` connects from with
/// [`SteeringConfig::loopback_sources`]: 127.0.1.0 + viewer (127.0.1.0 – 127.255.255.255).
pub(crate) fn loopback_source(viewer: u64) -> IpAddr {
    let offset = u32::try_from(viewer).unwrap_or(u32::MAX).min(0x00ff_feff);
    IpAddr::V4(Ipv4Addr::from(0x7f00_0100 + offset))
}

async fn connect(
    ctx: &Ctx,
    addr: SocketAddr,
    source: Option<IpAddr>,
) -> Result<Box<dyn Io>, ErrorKind> {
    let open = async {
        match source {
            Some(ip) if addr.is_ipv4() && addr.ip().is_loopback() => {
                let socket = TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await
            }
            _ => TcpStream::connect(addr).await,
        }
    };
    let tcp = timeout(ctx.cfg.request_timeout, open)
        .await
        .map_err(|_| ErrorKind::Connect)?
        .map_err(|_| ErrorKind::Connect)?;
    let _ = tcp.set_nodelay(true);
    Ok(Box::new(tcp))
}

/// One GET: the Host header, the path, and whether to ask the server to close after it.
struct Get<'a> {
    host: &'a str,
    path: &'a str,
    close: bool,
}

/// One GET on `io`: the head, and the body passed to `sink` as it arrives. Returns the head and
/// the body length.
async fn get(
    ctx: &Ctx,
    stats: &mut Stats,
    io: &mut Box<dyn Io>,
    buf: &mut [u8],
    req: Get<'_>,
    sink: &mut dyn FnMut(&[u8]),
) -> Result<(GetHead, u64), ErrorKind> {
    io.write_all(&get_request(req.host, req.path, req.close))
        .await
        .map_err(|_| ErrorKind::Io)?;
    let (head, filled) = read_head(ctx, stats, io, buf, parse_get_head).await?;
    let mut got = (filled - head.len) as u64;
    if head.content_length.is_some_and(|len| got > len) {
        return Err(ErrorKind::Protocol);
    }
    sink(&buf[head.len..filled]);
    loop {
        let want = match head.content_length {
            Some(len) if got >= len => break,
            Some(len) => (len - got).min(buf.len() as u64) as usize,
            None => buf.len(),
        };
        let n = io.read(&mut buf[..want]).await.map_err(|_| ErrorKind::Io)?;
        if n == 0 {
            if head.content_length.is_none() {
                break;
            }
            return Err(ErrorKind::Io);
        }
        record_bytes(ctx, stats, n);
        sink(&buf[..n]);
        got += n as u64;
    }
    Ok((head, got))
}

/// The viewer's state besides the playback model.
struct Viewer {
    stats: Stats,
    walk: SteeredStats,
    buf: Vec<u8>,
    conn: Option<Conn>,
    /// The address to connect from (None: the system's choice).
    source: Option<IpAddr>,
}

impl Viewer {
    /// GET `path` at `target` on the kept-alive connection (a new one when the address
    /// changed). Follows one redirect, on a connection of its own. Returns the body's length;
    /// checks it against `expect` (size, SHA-256) when given.
    async fn fetch(
        &mut self,
        ctx: &Ctx,
        target: &Target,
        path: &str,
        expect: Option<&(u64, String)>,
    ) -> Result<u64, ErrorKind> {
        if self.conn.as_ref().is_some_and(|c| c.addr != target.addr) {
            self.conn = None;
        }
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => Conn {
                addr: target.addr,
                io: connect(ctx, target.addr, self.source).await?,
            },
        };
        let mut hasher = Sha256::new();
        let (head, len) = get(
            ctx,
            &mut self.stats,
            &mut conn.io,
            &mut self.buf,
            Get {
                host: &target.host,
                path,
                close: false,
            },
            &mut |b| hasher.update(b),
        )
        .await?;
        if !head.close {
            self.conn = Some(conn);
        }
        let (status, len, hasher) = match (head.status, head.location) {
            (301 | 302 | 303 | 307 | 308, Some(location)) => {
                let to = Target::parse(&location).map_err(|_| ErrorKind::Protocol)?;
                if to.tls {
                    return Err(ErrorKind::Protocol);
                }
                let path = location_path(&location);
                let mut io = connect(ctx, to.addr, self.source).await?;
                let mut hasher = Sha256::new();
                let (head, len) = get(
                    ctx,
                    &mut self.stats,
                    &mut io,
                    &mut self.buf,
                    Get {
                        host: &to.host,
                        path: &path,
                        close: true,
                    },
                    &mut |b| hasher.update(b),
                )
                .await?;
                (head.status, len, hasher)
            }
            (status, _) => (status, len, hasher),
        };
        if status != 200 {
            return Err(ErrorKind::Status);
        }
        if let Some((size, sha256)) = expect {
            if len != *size {
                return Err(ErrorKind::Length);
            }
            let digest = hasher.finalize();
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            if hex != *sha256 {
                return Err(ErrorKind::Content);
            }
        }
        Ok(len)
    }

    /// Asks steering for `path` (a connection of its own, closed after the answer).
    async fn steering(&mut self, ctx: &Ctx, path: &str) -> Result<Steering, ErrorKind> {
        let target = &ctx.cfg.target;
        let mut io = connect(ctx, target.addr, self.source).await?;
        let mut body = Vec::new();
        let (head, _) = timeout(
            ctx.cfg.request_timeout,
            get(
                ctx,
                &mut self.stats,
                &mut io,
                &mut self.buf,
                Get {
                    host: &target.host,
                    path,
                    close: true,
                },
                &mut |b| body.extend_from_slice(b),
            ),
        )
        .await
        .map_err(|_| ErrorKind::Timeout)??;
        if head.status != 200 {
            return Err(ErrorKind::Status);
        }
        serde_json::from_slice(&body).map_err(|_| ErrorKind::Protocol)
    }
}

/// The path and query of an absolute `http://host[:port]/path?query` URL.
fn location_path(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.find('/') {
        Some(i) => rest[i..].to_owned(),
        None => "/".to_owned(),
    }
}

/// `?title=T[&client=IP]` appended to the steering URL's path.
fn steering_path(target: &Target, s: &SteeringConfig, title: &str) -> String {
    let mut path = format!("{}?title={}", target.prefix, encode(title));
    if let Some(c) = &s.client {
        path += &format!("&client={}", encode(c));
    }
    path
}

/// Percent-encodes everything but unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub(crate) async fn viewer_task(
    ctx: &Ctx,
    p: &PlayerConfig,
    s: &SteeringConfig,
    viewer: u64,
) -> Stats {
    let mut rng = Rng::new(ctx.cfg.seed ^ viewer.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let title = p.titles[Zipf::new(p.titles.len(), p.zipf_s).sample(&mut rng)]
        .name
        .clone();
    let mut v = Viewer {
        stats: Stats::new(ctx.classes),
        walk: SteeredStats::default(),
        buf: vec![0; BUF],
        conn: None,
        source: s.loopback_sources.then(|| loopback_source(viewer)),
    };
    let mut playback = Playback::new(p.startup_s);
    let join = ctx.start + Duration::from_secs_f64(p.ramp_s * viewer as f64 / p.viewers as f64);
    sleep_until(join).await;
    // The session starts now: the first steering request counts into the start-up time.
    let mut last = Instant::now();
    let path = steering_path(&ctx.cfg.target, s, &title);
    let reload = Duration::from_secs_f64(s.reload_s.max(0.1));
    let segment_timeout = Duration::from_secs_f64(s.segment_timeout_s.max(0.01));

    // The first answer: asked until it comes (or the run ends).
    let mut answer = loop {
        if Instant::now() >= ctx.deadline {
            return v.finish(&playback, 0, None);
        }
        match v.steering(ctx, &path).await {
            Ok(a) => break a,
            Err(kind) => {
                fail(ctx, &mut v.stats, kind);
                v.walk.steering_errors += 1;
                sleep(EXHAUSTED_PAUSE).await;
            }
        }
    };
    let mut walk = Pathways::new(answer_keys(&answer));
    let mut targets = location_targets(&answer);
    let rungs = ladder(&answer.renditions);
    if rungs.is_empty() {
        fail(ctx, &mut v.stats, ErrorKind::Protocol);
        return v.finish(&playback, 0, walk.current_key());
    }
    let mut abr = Abr::new(rungs.iter().map(|&(_, kbps)| kbps).collect(), p.segment_s);
    let mut next_reload = Instant::now() + reload;
    // The start of the current outage's first failed request.
    let mut outage: Option<Instant> = None;
    let (mut rung, mut index, mut segments) = (0usize, 0u64, 0u64);
    loop {
        let now = Instant::now().min(ctx.deadline);
        playback.advance(now.duration_since(last).as_secs_f64());
        last = now;
        if now >= ctx.deadline {
            break;
        }
        if now >= next_reload {
            next_reload = now + reload;
            match v.steering(ctx, &path).await {
                Ok(a) => {
                    if let Move::To(_) = walk.on_answer(answer_keys(&a)) {
                        v.walk.steering_moves += 1;
                    }
                    targets = location_targets(&a);
                    answer = a;
                }
                Err(kind) => {
                    fail(ctx, &mut v.stats, kind);
                    v.walk.steering_errors += 1;
                }
            }
            continue;
        }
        if playback.buffer_s >= p.buffer_target_s {
            let wait = Duration::from_secs_f64(playback.buffer_s - p.buffer_target_s + 1e-3);
            sleep_until((now + wait).min(ctx.deadline).min(next_reload)).await;
            continue;
        }
        rung = abr.choose(playback.buffer_s, rung);
        let (rendition, kbps) = rungs[rung];
        let Some(id) = answer
            .renditions
            .get(rendition)
            .and_then(|r| segment_id(r, index))
        else {
            fail(ctx, &mut v.stats, ErrorKind::Protocol);
            break;
        };
        let here = walk.current();
        let key = walk.current_key().unwrap_or("none").to_owned();
        let sent = Instant::now();
        let result = match here.and_then(|i| targets.get(i)?.as_ref()) {
            Some(target) => {
                let path = format!("{}/{id}", target.prefix);
                timeout(
                    segment_timeout,
                    v.fetch(ctx, target, &path, s.expect.get(&id)),
                )
                .await
                .unwrap_or(Err(ErrorKind::Timeout))
            }
            // No location, or one this player cannot fetch from (https).
            None => Err(ErrorKind::Protocol),
        };
        let done = Instant::now();
        match result {
            Ok(len) => {
                let secs = done.duration_since(sent).as_secs_f64();
                abr.observe(len, secs);
                let at = done.min(ctx.deadline);
                playback.advance(at.duration_since(last).as_secs_f64());
                last = at;
                if done <= ctx.deadline {
                    playback.push_segment(p.segment_s, kbps, rung);
                    segments += 1;
                }
                index += 1;
                *v.walk.location_bytes.entry(key).or_default() += len;
                if let Some(began) = outage.take() {
                    v.walk
                        .recover_s
                        .push(done.duration_since(began).as_secs_f64());
                }
                ctx.live.requests.fetch_add(1, Ordering::Relaxed);
                ctx.record_live((secs * 1e6) as u64);
                v.stats.success(
                    done.duration_since(ctx.start).as_secs_f64(),
                    0,
                    (secs * 1e6) as u64,
                    len,
                );
            }
            Err(kind) => {
                v.conn = None;
                if done >= ctx.deadline && kind == ErrorKind::Timeout {
                    break;
                }
                fail(ctx, &mut v.stats, kind);
                outage.get_or_insert(sent);
                match walk.on_failure() {
                    Move::To(_) => v.walk.failovers += 1,
                    Move::Stay => {}
                    Move::Exhausted => {
                        v.walk.exhausted += 1;
                        sleep_until((Instant::now() + EXHAUSTED_PAUSE).min(ctx.deadline)).await;
                        next_reload = Instant::now();
                    }
                }
            }
        }
    }
    v.walk.unrecovered = outage.is_some();
    let at = walk.current_key().map(str::to_owned);
    v.finish(&playback, segments, at.as_deref())
}

impl Viewer {
    fn finish(mut self, playback: &Playback, segments: u64, location: Option<&str>) -> Stats {
        self.walk.location = location.map(str::to_owned);
        self.stats.viewers.push(ViewerStats {
            startup_s: playback.startup_s,
            stall_s: playback.stall_s,
            stalls: playback.stalls,
            played_s: playback.played_s,
            delivered_kbps: playback.delivered_kbps(),
            switches: playback.switches,
            segments,
            steered: Some(self.walk),
        });
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_paths_and_query_encoding() {
        assert_eq!(
            location_path("http://127.0.0.1:9000/origin/t0000-240p-0001.m4s?X-Amz-Signature=ab"),
            "/origin/t0000-240p-0001.m4s?X-Amz-Signature=ab"
        );
        assert_eq!(location_path("http://h:1"), "/");
        let t = Target::parse("http://127.0.0.1:8700/v1/steering").unwrap();
        let s = SteeringConfig {
            url: "http://127.0.0.1:8700/v1/steering".into(),
            client: Some("2001:db8::1".into()),
            reload_s: 10.0,
            segment_timeout_s: 4.0,
            expect: Default::default(),
            loopback_sources: false,
        };
        assert_eq!(
            steering_path(&t, &s, "t 1"),
            "/v1/steering?title=t%201&client=2001%3Adb8%3A%3A1"
        );
        assert_eq!(loopback_source(0).to_string(), "127.0.1.0");
        assert_eq!(loopback_source(999).to_string(), "127.0.4.231");
        assert_eq!(loopback_source(u64::MAX).to_string(), "127.255.255.255");
    }
}
