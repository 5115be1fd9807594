//! Request heads as a client sends them, possibly several pipelined: parse every head in the
//! buffer, plan the response for objects of several sizes, render its head. Nothing may panic;
//! a complete head consumes between 1 byte and the whole buffer; every plan's body lies inside
//! the object and agrees with its Content-Length and Content-Range; every rendered head is a
//! well-formed HTTP/1.1 response head.
#![no_main]

use edgeplane_dataplane::http::request::{self, Limits, Parsed, Target};
use edgeplane_dataplane::http::response::{self, ContentRange, HeadContext, ObjectMeta};
use edgeplane_dataplane::http::Status;
use libfuzzer_sys::fuzz_target;

const SIZES: [u64; 5] = [0, 1, 1000, 64 * 1024 * 1024, u64::MAX / 2];
const ETAG: &str = "\"5f3a-10\"";
const LAST_MODIFIED: &str = "Tue, 01 Dec 2026 10:00:00 GMT";

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_header_bytes: 8192,
        max_headers: 64,
        max_uri_bytes: 2048,
    };
    let fixed = response::render_fixed_headers("video/mp4", ETAG, LAST_MODIFIED);
    let mut rest = data;
    let mut out = Vec::new();
    // At most as many heads as a buffer of this size can hold; bounds the loop regardless.
    for _ in 0..64 {
        match request::parse(rest, &limits) {
            Parsed::Partial => break,
            Parsed::Error(status) => {
                assert!((400..600).contains(&status.code()), "{status:?}");
                break;
            }
            Parsed::Complete { request: req, len } => {
                assert!(
                    len > 0 && len <= rest.len(),
                    "consumed {len} of {}",
                    rest.len()
                );
                if let Target::Object { id, path_range, .. } = req.target {
                    assert!(edgeplane_api::valid_content_id(id), "{id:?}");
                    for size in SIZES {
                        let obj = ObjectMeta {
                            size,
                            etag: ETAG,
                            last_modified: LAST_MODIFIED,
                            fixed_headers: &fixed,
                        };
                        let plan = response::plan(&req, &obj, path_range);
                        check_plan(&plan, size);
                        let ctx = HeadContext {
                            date: b"Fri, 04 Dec 2026 06:00:00 GMT",
                            cors: req.has_origin,
                            keep_alive: req.keep_alive,
                            http10: req.http10,
                        };
                        response::write_object_head(&mut out, &plan, &obj, &ctx);
                        well_formed(&out);
                    }
                }
                rest = &rest[len..];
            }
        }
    }
});

fn check_plan(plan: &response::Plan, size: u64) {
    if let Some((start, len)) = plan.body {
        assert!(len > 0, "empty body range");
        assert!(
            start.checked_add(len).is_some_and(|end| end <= size),
            "{start}+{len} > {size}"
        );
        assert_eq!(plan.content_length, len);
    }
    match (plan.status, plan.content_range) {
        (Status::PartialContent, Some(ContentRange::Bytes { start, len, total })) => {
            assert_eq!(total, size);
            assert!(len > 0 && start + len <= size);
            assert_eq!(plan.content_length, len);
            if let Some(body) = plan.body {
                assert_eq!(body, (start, len));
            }
        }
        (Status::RangeNotSatisfiable, Some(ContentRange::Unsatisfied { total })) => {
            assert_eq!(total, size);
            assert!(plan.body.is_none());
        }
        (Status::Ok, None) => assert_eq!(plan.content_length, size),
        (Status::NotModified, None) => assert!(plan.body.is_none()),
        other => panic!("inconsistent plan: {other:?}"),
    }
}

fn well_formed(head: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, head.len(), "bytes after the head"),
        other => panic!(
            "not a response head: {other:?}: {:?}",
            String::from_utf8_lossy(head)
        ),
    }
}
