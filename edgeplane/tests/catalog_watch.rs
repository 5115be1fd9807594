//! The catalog follows the tier directories without reload calls: an object renamed in (how
//! fill and pull-through install objects) is served, a deleted one answers 404 (even when a
//! core had it open in its file cache), a replaced one is served in its new version; a watch
//! queue overflow falls back to a full rescan; a tier directory replaced or mounted over under
//! its watch is watched again and rescanned. The change feed (`GET /catalog/changes`) numbers
//! those changes and says `reset` when it cannot follow on.
//!
//! Everything here is real: inotify on real directories, a real queue overflow (the server is
//! stopped with SIGSTOP while more changes than `fs.inotify.max_queued_events` happen), a real
//! mount. Nothing is timed: conditions are polled for.

use std::fs;
use std::path::Path;

use edgeplane_test_support::prelude::*;

/// The binary under test (Cargo builds it for these tests).
const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");

/// Installs `data` as `dir/name` the way fill does: a hidden temporary, fsync, rename.
fn install(dir: &Path, name: &str, data: &[u8]) {
    let tmp = dir.join(format!(".tmp-{name}"));
    fs::write(&tmp, data).unwrap();
    fs::File::open(&tmp).unwrap().sync_all().unwrap();
    fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Polls `GET /id` until it answers `status` (and, for 200, exactly `body`).
#[track_caller]
fn wait_for(server: &Server, id: &str, status: u16, body: Option<&[u8]>) {
    poll(&format!("/{id} to answer {status}"), || {
        let r = server.get(&format!("/{id}"), &[]);
        (r.status == status && body.is_none_or(|b| r.body == b)).then_some(())
    });
}

fn generation(server: &Server) -> f64 {
    server.metrics().sum("edgeplane_catalog_generation", &[])
}

fn rescans(server: &Server, reason: &str) -> f64 {
    server.metrics().sum(
        "edgeplane_catalog_watch_rescans_total",
        &[("reason", reason)],
    )
}

#[test]
fn objects_renamed_in_deleted_and_replaced_are_followed_without_a_reload() {
    let builder = ServerBuilder::new(BIN)
        .cores(1)
        .tier("hdd", "storage")
        .file("hdd", "both.ts", &pattern("hdd copy", 3_000));
    let flash = builder.tier_dir("flash");
    let hdd = builder.tier_dir("hdd");
    let server = builder.start();
    let start_generation = generation(&server);

    // Renamed in: served, no reload call.
    assert_eq!(server.get("/new.ts", &[]).status, 404);
    let v1 = pattern("version 1", 50_000);
    install(&flash, "new.ts", &v1);
    wait_for(&server, "new.ts", 200, Some(&v1));

    // Replaced by a rename over it while this core holds the old file open in its cache: the
    // new version is served.
    let v2 = pattern("version 2", 40_000);
    install(&flash, "new.ts", &v2);
    wait_for(&server, "new.ts", 200, Some(&v2));

    // Deleted while cached: 404 (the cache checks the catalog's entry on every hit).
    assert_eq!(server.get("/new.ts", &[]).status, 200);
    fs::remove_file(flash.join("new.ts")).unwrap();
    wait_for(&server, "new.ts", 404, None);

    // A copy on flash wins over storage's; deleting it falls back to storage's copy.
    let hdd_copy = pattern("hdd copy", 3_000);
    wait_for(&server, "both.ts", 200, Some(&hdd_copy));
    let flash_copy = pattern("flash copy", 2_000);
    install(&flash, "both.ts", &flash_copy);
    wait_for(&server, "both.ts", 200, Some(&flash_copy));
    fs::remove_file(flash.join("both.ts")).unwrap();
    wait_for(&server, "both.ts", 200, Some(&hdd_copy));
    fs::remove_file(hdd.join("both.ts")).unwrap();
    wait_for(&server, "both.ts", 404, None);

    // A hard link raises only IN_CREATE: served too.
    fs::write(flash.join(".src"), b"hard").unwrap();
    fs::hard_link(flash.join(".src"), flash.join("linked.ts")).unwrap();
    wait_for(&server, "linked.ts", 200, Some(b"hard"));
    fs::remove_file(flash.join("linked.ts")).unwrap();
    wait_for(&server, "linked.ts", 404, None);

    // A file written in place is not served while it is open for writing (a half-written
    // object must never go out), and is once it is closed. The marker renamed in after the
    // partial write makes sure the watch has seen the file's creation before the check.
    {
        use std::io::Write as _;
        let mut f = fs::File::create(flash.join("in-place.ts")).unwrap();
        f.write_all(b"first half ").unwrap();
        install(&flash, "sync-1.ts", b"s");
        wait_for(&server, "sync-1.ts", 200, Some(b"s"));
        assert_eq!(
            server.get("/in-place.ts", &[]).status,
            404,
            "a file still being written was served"
        );
        f.write_all(b"second half").unwrap();
    }
    wait_for(&server, "in-place.ts", 200, Some(b"first half second half"));

    // Temporaries, symlinks and directories never become objects.
    fs::write(flash.join(".tmp-partial.ts"), b"partial").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", flash.join("link.ts")).unwrap();
    fs::create_dir(flash.join("dir.ts")).unwrap();
    install(&flash, "marker.ts", b"m");
    wait_for(&server, "marker.ts", 200, Some(b"m"));
    for id in [".tmp-partial.ts", "link.ts", "dir.ts"] {
        assert_eq!(server.get(&format!("/{id}"), &[]).status, 404, "{id}");
    }

    // All of it without a rescan, and counted.
    let m = server.metrics();
    assert_eq!(
        m.sum("edgeplane_catalog_generation", &[]),
        start_generation,
        "no rescan happened"
    );
    // new.ts added, replaced, deleted; both.ts to flash, back to hdd, gone; marker.ts added.
    assert!(
        m.sum("edgeplane_catalog_watch_changes_total", &[]) >= 7.0,
        "{}",
        m.text
    );
    assert!(
        m.sum("edgeplane_catalog_watch_events_total", &[]) >= 7.0,
        "{}",
        m.text
    );
    assert_eq!(m.sum("edgeplane_catalog_watch_rescans_total", &[]), 0.0);
    // The counts follow too: the canary, sync-1.ts, in-place.ts and marker.ts on flash,
    // nothing left on hdd.
    assert_eq!(
        m.sum("edgeplane_catalog_objects", &[("tier", "flash")]),
        4.0
    );
    assert_eq!(m.sum("edgeplane_catalog_objects", &[("tier", "hdd")]), 0.0);

    // POST /reload still rescans everything.
    server.reload();
    assert_eq!(generation(&server), start_generation + 1.0);
    wait_for(&server, "marker.ts", 200, Some(b"m"));
}

/// `GET path` on the admin listener, as JSON.
#[track_caller]
fn admin_json(server: &Server, path: &str) -> serde_json::Value {
    let r = server.admin_get(path);
    assert_eq!(
        r.status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&r.body)
    );
    serde_json::from_slice(&r.body).unwrap()
}

/// The changes after `since` in `epoch`, as `(op, id, tier)`, and the answer.
fn changes_after(
    server: &Server,
    since: u64,
    epoch: &str,
) -> (Vec<(String, String, String)>, serde_json::Value) {
    let body = admin_json(
        server,
        &format!("/catalog/changes?since={since}&epoch={epoch}"),
    );
    let changes = body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            (s("op"), s("id"), s("tier"))
        })
        .collect();
    (changes, body)
}

#[test]
fn the_change_feed_follows_renames_and_deletes_and_resets_after_a_rescan() {
    let builder = ServerBuilder::new(BIN)
        .cores(1)
        .tier("hdd", "storage")
        .file("hdd", "kept.ts", b"kept");
    let flash = builder.tier_dir("flash");
    let server = builder.start();

    // The listing says where to follow from.
    let listing = admin_json(&server, "/catalog");
    let epoch = listing["epoch"].as_str().unwrap().to_string();
    let since = listing["seq"].as_u64().unwrap();
    let (none, body) = changes_after(&server, since, &epoch);
    assert!(none.is_empty(), "{body}");
    assert_eq!(body["reset"], false);

    // Renamed in: an add on flash; deleted: a remove. Both in order, numbered after `since`.
    install(&flash, "fresh.ts", b"fresh");
    wait_for(&server, "fresh.ts", 200, Some(b"fresh"));
    fs::remove_file(flash.join("fresh.ts")).unwrap();
    wait_for(&server, "fresh.ts", 404, None);
    let (changes, body) = changes_after(&server, since, &epoch);
    let want = |op: &str| (op.to_string(), "fresh.ts".to_string(), "flash".to_string());
    assert_eq!(changes, [want("add"), want("remove")], "{body}");
    assert_eq!(body["seq"].as_u64().unwrap(), since + 2);
    assert_eq!(body["seq"], body["latest"]);
    assert_eq!(body["more"], false);
    assert_eq!(body["changes"][0]["seq"].as_u64().unwrap(), since + 1);
    // Paged: one at a time.
    let one = admin_json(&server, &format!("/catalog/changes?since={since}&limit=1"));
    assert_eq!(one["changes"].as_array().unwrap().len(), 1);
    assert_eq!(one["more"], true);
    // Nothing new after the last answer; the tiers' counts come with it.
    let (none, body) = changes_after(&server, since + 2, &epoch);
    assert!(none.is_empty());
    assert_eq!(body["tiers"][1]["name"], "hdd");
    assert_eq!(body["tiers"][1]["objects"], 1);

    // A rescan: everything before it must be listed again.
    server.reload();
    let (none, body) = changes_after(&server, since + 2, &epoch);
    assert!(none.is_empty());
    assert_eq!(body["reset"], true, "{body}");
    let listing = admin_json(&server, "/catalog");
    assert_eq!(
        listing["seq"], body["latest"],
        "the listing is where to follow from"
    );
    // Another epoch (a restarted data plane), a number from the future: reset too.
    let (_, body) = changes_after(&server, 0, "0123456789abcdef");
    assert_eq!(body["reset"], true);
    let (_, body) = changes_after(&server, 1 << 40, &epoch);
    assert_eq!(body["reset"], true);

    // Bad queries: 400 with the reason.
    for bad in [
        "",
        "?since=x",
        "?since=1&limit=0",
        "?since=1&epoch=nothex",
        "?since=1&id=a",
    ] {
        let r = server.admin_get(&format!("/catalog/changes{bad}"));
        assert_eq!(r.status, 400, "{bad}: {}", String::from_utf8_lossy(&r.body));
    }
}

#[test]
fn a_watch_queue_overflow_falls_back_to_a_rescan() {
    let max_queued: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        max_queued <= 1_000_000,
        "fs.inotify.max_queued_events is {max_queued}: too many files to overflow it here"
    );
    let builder = ServerBuilder::new(BIN).cores(1);
    let flash = builder.tier_dir("flash");
    let server = builder.start();
    assert_eq!(rescans(&server, "overflow"), 0.0);

    // Stopped, the server reads no events: more changes than the queue holds overflow it.
    let n = max_queued + 100;
    server.signal("STOP");
    let mut made = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("burst-{i}.ts");
        fs::write(flash.join(format!(".tmp-{i}")), id.as_bytes()).unwrap();
        fs::rename(flash.join(format!(".tmp-{i}")), flash.join(&id)).unwrap();
        made.push(id);
    }
    server.signal("CONT");

    // Counted as the rescan starts; the rescan finds every object.
    server.wait_metrics("an overflow rescan that found every object", |m| {
        m.sum(
            "edgeplane_catalog_watch_rescans_total",
            &[("reason", "overflow")],
        ) >= 1.0
            && m.sum("edgeplane_catalog_objects", &[("tier", "flash")]) >= n as f64
    });
    for id in [&made[0], &made[n / 2], &made[n - 1]] {
        wait_for(&server, id, 200, Some(id.as_bytes()));
    }
    assert!(
        server.output().contains("overflowed"),
        "the fallback is logged:\n{}",
        server.output()
    );
    // And the watch still works after it.
    install(&flash, "after.ts", b"after");
    wait_for(&server, "after.ts", 200, Some(b"after"));
}

#[test]
fn a_tier_directory_replaced_under_its_watch_is_picked_up() {
    // A long tier-check interval: the catalog watch alone must notice.
    let builder = ServerBuilder::new(BIN)
        .cores(1)
        .io("tier_check_interval_ms", "600000")
        .file("flash", "old.ts", b"old");
    let flash = builder.tier_dir("flash");
    let server = builder.start();
    wait_for(&server, "old.ts", 200, Some(b"old"));

    // Replaced by rename: a new directory takes the old one's path.
    let fresh = flash.with_extension("new");
    fs::create_dir(&fresh).unwrap();
    fs::write(fresh.join("fresh.ts"), b"fresh").unwrap();
    fs::rename(&flash, flash.with_extension("old")).unwrap();
    fs::rename(&fresh, &flash).unwrap();
    wait_for(&server, "fresh.ts", 200, Some(b"fresh"));
    wait_for(&server, "old.ts", 404, None);
    assert!(rescans(&server, "replaced") >= 1.0);
    // The new directory is watched.
    install(&flash, "later.ts", b"later");
    wait_for(&server, "later.ts", 200, Some(b"later"));

    // Mounted over (a tier remounted at its path): no event reaches the old directory's watch;
    // the watcher sees the path's device change.
    let before = rescans(&server, "replaced");
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "edgeplane-test"])
        .arg(&flash)
        .status()
        .unwrap();
    assert!(status.success(), "mount tmpfs (the tests run as root)");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&flash);
    fs::write(flash.join("mounted.ts"), b"on tmpfs").unwrap();
    wait_for(&server, "mounted.ts", 200, Some(b"on tmpfs"));
    wait_for(&server, "later.ts", 404, None);
    assert!(rescans(&server, "replaced") > before);
    install(&flash, "on-mount.ts", b"watched");
    wait_for(&server, "on-mount.ts", 200, Some(b"watched"));
    // The server watches the mount: stop it first, or the unmount finds the mount busy.
    drop(server);
}
