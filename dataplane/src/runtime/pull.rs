//! Answering a miss from a pull (`crate::pull`) on an executor: join or start the pull, wait
//! (without blocking: the fetch threads wake the task) for the object's size, plan the response
//! like a hit's, then send each part of the range with `sendfile` from the partly written file
//! as soon as its bytes are on disk.

use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::sync::Arc;

use super::core::Core;
use super::transport::{End, Transport};
use crate::catalog::OpenObject;
use crate::http::range::{self, RangeHeader, RangeSpec};
use crate::http::request::Request;
use crate::http::response::{self, HeadContext, ObjectMeta};
use crate::http::Status;
use crate::pull::{Head, Joined, Object, PullError, Puller};

/// What became of a miss.
pub(crate) enum Miss {
    /// The response head is in `out`; the body (if any) follows.
    Answered(Status, Option<PullBody>),
    /// The object was installed meanwhile: answer it as a hit.
    InCatalog,
}

/// A client's part in a pull; leaves it when dropped (done, failed or disconnected).
struct Member(Arc<Object>);

impl Drop for Member {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// The body of a response to a miss: `start..start+len` of an object being pulled.
pub(crate) struct PullBody {
    member: Member,
    file: Rc<OpenObject>,
    start: u64,
    len: u64,
}

/// Where a request's range starts when that is known without the object's size.
fn first_byte(req: &Request<'_>, path_range: Option<RangeSpec>) -> Option<u64> {
    let spec = match path_range {
        Some(s) => Some(s),
        None => match req.range.map(range::parse_header) {
            Some(RangeHeader::Single(s)) => Some(s),
            _ => None,
        },
    };
    match spec {
        Some(RangeSpec::FromTo(a, _) | RangeSpec::From(a)) => Some(a),
        _ => None,
    }
}

/// Writes the error a failed pull gives the client; returns its status.
fn write_pull_error(out: &mut Vec<u8>, ctx: &HeadContext<'_>, head: bool, e: &PullError) -> Status {
    let (status, extra): (Status, &[u8]) = match e {
        PullError::NotFound => (Status::NotFound, b"Cache-Status: edgeplane; fwd=miss\r\n"),
        PullError::Timeout => (
            Status::GatewayTimeout,
            b"Cache-Status: edgeplane; fwd=miss; detail=\"upstream timeout\"\r\n",
        ),
        PullError::Upstream(_) => (
            Status::BadGateway,
            b"Cache-Status: edgeplane; fwd=miss; detail=\"upstream error\"\r\n",
        ),
        PullError::Busy => (
            Status::ServiceUnavailable,
            b"Retry-After: 1\r\nCache-Status: edgeplane; fwd=miss; detail=\"upstream busy\"\r\n",
        ),
    };
    response::write_error(out, status, ctx, head, extra);
    status
}

/// Adds header lines to a finished head (before its blank line).
pub(crate) fn add_header(out: &mut Vec<u8>, lines: &[u8]) {
    let at = out.len() - 2;
    out.splice(at..at, lines.iter().copied());
}

/// Answers a request for `id`, which the catalog does not have, from a pull.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn respond_miss(
    core: &Core,
    pull: &Arc<Puller>,
    out: &mut Vec<u8>,
    req: &Request<'_>,
    ctx: &HeadContext<'_>,
    head: bool,
    id: &str,
    path_range: Option<RangeSpec>,
) -> Miss {
    let (obj, started) = match pull.start_or_join(id, first_byte(req, path_range)) {
        Ok(Joined::InCatalog) => return Miss::InCatalog,
        Ok(Joined::Pull(obj, started)) => (obj, started),
        Err(e) => return Miss::Answered(write_pull_error(out, ctx, head, &e), None),
    };
    obj.join();
    let member = Member(obj.clone());
    let h: Arc<Head> = match poll_fn(|cx| obj.poll_head(cx)).await {
        Ok(h) => h,
        Err(e) => return Miss::Answered(write_pull_error(out, ctx, head, &e), None),
    };
    let meta = ObjectMeta {
        size: h.size,
        etag: &h.etag,
        last_modified: &h.last_modified,
        fixed_headers: &h.fixed_headers,
    };
    let plan = response::plan(req, &meta, path_range);
    response::write_object_head(out, &plan, &meta, ctx);
    if started {
        if obj.likely_stored {
            add_header(out, b"Cache-Status: edgeplane; fwd=miss; stored\r\n");
        } else {
            add_header(out, b"Cache-Status: edgeplane; fwd=miss\r\n");
        }
    } else {
        let mut line = b"Cache-Status: edgeplane; fwd=miss; collapsed\r\nAge: ".to_vec();
        line.extend_from_slice(
            itoa::Buffer::new()
                .format(h.fetched.elapsed().as_secs())
                .as_bytes(),
        );
        line.extend_from_slice(b"\r\n");
        add_header(out, &line);
    }
    let body = plan.body.map(|(start, len)| PullBody {
        member,
        file: Rc::new(OpenObject {
            file: h.file.clone(),
            map: None,
            tier: pull.tier(),
            size: h.size,
            etag: String::new(),
            last_modified: String::new(),
            fixed_headers: Vec::new(),
            generation: 0,
            stamp: 0,
            resident_until: Box::default(),
        }),
        start,
        len,
    });
    let _ = core;
    Miss::Answered(plan.status, body)
}

impl PullBody {
    /// Sends the range, each part as soon as the fetch threads have written it. A pull that
    /// fails mid-body ends the response short (the connection closes without completing it),
    /// so no client mistakes a partial body for the object.
    pub(crate) async fn send<T: Transport>(
        &self,
        core: &Core,
        pull: &Puller,
        t: &mut T,
    ) -> Result<(), End> {
        let obj = &self.member.0;
        let end = self.start + self.len;
        let mut off = self.start;
        while off < end {
            let avail = poll_fn(|cx| obj.poll_available(pull, off, end, cx))
                .await
                .map_err(|e| {
                    End::Object(io::Error::other(format!(
                        "pull of {} failed: {e:?}",
                        obj.id
                    )))
                })?;
            t.send_body(core, &self.file, off, avail - off).await?;
            off = avail;
        }
        Ok(())
    }

    /// Whether the body's first bytes are on disk now, so they follow the head at once and the
    /// head may wait to share a packet with them (`MSG_MORE`). When they are not, the head must
    /// go out alone, at once: a head sent with `MSG_MORE` stays in the kernel until more bytes
    /// follow or its probe timer fires (~200 ms later), so a waiter whose range is still on the
    /// way would see its head late, not when the upstream's head arrived.
    pub(crate) fn follows_at_once(&self, pull: &Puller) -> bool {
        self.member.0.available_now(pull, self.start)
    }

    /// Body length.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}
