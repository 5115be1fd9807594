//! `Content-Type` from a content id's extension, for the formats video players fetch.

/// The media type for an object named `id`.
pub fn content_type(id: &str) -> &'static str {
    let ext = match id.rsplit_once('.') {
        Some((_, ext)) => ext,
        None => return "application/octet-stream",
    };
    match ext.to_ascii_lowercase().as_str() {
        "mp4" => "video/mp4",
        "m4s" => "video/iso.segment",
        "m4v" => "video/mp4",
        "m4a" => "audio/mp4",
        "ts" => "video/mp2t",
        "m3u8" => "application/vnd.apple.mpegurl",
        "mpd" => "application/dash+xml",
        "vtt" => "text/vtt",
        "webm" => "video/webm",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::content_type;

    #[test]
    fn maps_video_extensions() {
        assert_eq!(content_type("a.mp4"), "video/mp4");
        assert_eq!(content_type("seg-1.m4s"), "video/iso.segment");
        assert_eq!(content_type("a.M4A"), "audio/mp4");
        assert_eq!(content_type("x.ts"), "video/mp2t");
        assert_eq!(content_type("m.m3u8"), "application/vnd.apple.mpegurl");
        assert_eq!(content_type("m.mpd"), "application/dash+xml");
        assert_eq!(content_type("s.vtt"), "text/vtt");
        assert_eq!(content_type("blob"), "application/octet-stream");
        assert_eq!(content_type("blob.bin"), "application/octet-stream");
    }
}
