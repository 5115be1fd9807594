//! Playable titles: the conventions an encoded title follows and the manifests made from it.
//!
//! An encoded title (`edgeplane cloud gen-catalog --encode`, [`crate::cloud::encode`]) is an
//! ordinary catalog title whose renditions follow these rules, so the manifests can be made from
//! the catalog alone:
//!
//! * video renditions are named `<height>p` (16:9, H.264 Main, level 3.1), audio is `audio`
//!   (AAC-LC, stereo, 48 kHz);
//! * each rendition's objects are its init segment `<title>-<rendition>-init.mp4`, its CMAF
//!   media segments `<title>-<rendition>-<n:04>.m4s` (n from 1, [`SEGMENT_SECS`] each) and its
//!   HLS media playlist `<title>-<rendition>.m3u8` (relative URIs);
//! * a `manifest` rendition (bitrate 0) holds the title's static DASH MPD `<title>.mpd` and HLS
//!   multivariant playlist `<title>.m3u8` (relative URIs, no steering: playable from any one
//!   location as-is).
//!
//! The steered manifests the players load (served by the control service, see
//! [`crate::cloud::content_steering`]) are the same documents with one `BaseURL` / one variant
//! set per pathway and the content steering server named.

use std::fmt::Write as _;

use edgeplane_api::{Rendition, Title};

/// Seconds per media segment.
pub const SEGMENT_SECS: u32 = 2;
/// The H.264 codecs string of every video rendition (Main profile, level 3.1).
pub const VIDEO_CODECS: &str = "avc1.4d401f";
/// The audio codecs string (AAC-LC).
pub const AUDIO_CODECS: &str = "mp4a.40.2";
/// The name of the audio rendition.
pub const AUDIO: &str = "audio";
/// The name of the rendition that carries the title's static manifests.
pub const MANIFEST: &str = "manifest";

/// What a rendition is, from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Video of this width and height.
    Video {
        /// Pixels.
        width: u32,
        /// Pixels.
        height: u32,
    },
    /// The audio rendition.
    Audio,
}

/// The width of a 16:9 picture `height` pixels high (even).
pub fn width_of(height: u32) -> u32 {
    (height * 16 / 9 + 1) & !1
}

/// The kind of a rendition named `name`, if it is one of a playable title's.
pub fn kind_of(name: &str) -> Option<Kind> {
    if name == AUDIO {
        return Some(Kind::Audio);
    }
    let height: u32 = name.strip_suffix('p')?.parse().ok()?;
    (height > 0 && height <= 4320).then(|| Kind::Video {
        width: width_of(height),
        height,
    })
}

/// `<title>-<rendition>-init.mp4`
pub fn init_id(title: &str, rendition: &str) -> String {
    format!("{title}-{rendition}-init.mp4")
}

/// `<title>-<rendition>-<n:04>.m4s`
pub fn segment_id(title: &str, rendition: &str, n: usize) -> String {
    format!("{title}-{rendition}-{n:04}.m4s")
}

/// `<title>-<rendition>.m3u8`
pub fn media_playlist_id(title: &str, rendition: &str) -> String {
    format!("{title}-{rendition}.m3u8")
}

/// A playable title's media renditions with their kinds, and its number of segments.
pub type Playable<'a> = (Vec<(&'a Rendition, Kind)>, usize);

/// A playable title's media renditions (video ascending by bitrate, then audio) and its number
/// of segments, or why it is not playable.
pub fn playable(title: &Title) -> Result<Playable<'_>, String> {
    let mut out: Vec<(&Rendition, Kind)> = Vec::new();
    let mut segments = None;
    for r in &title.renditions {
        if r.name == MANIFEST {
            continue;
        }
        let kind = kind_of(&r.name).ok_or_else(|| {
            format!(
                "title {:?} is not an encoded title (rendition {:?})",
                title.id, r.name
            )
        })?;
        let init = init_id(&title.id, &r.name);
        if !r.objects.iter().any(|o| o.id == init) {
            return Err(format!(
                "title {:?} is not an encoded title (no {init})",
                title.id
            ));
        }
        let n = r.objects.iter().filter(|o| o.id.ends_with(".m4s")).count();
        if n == 0 || segments.is_some_and(|s| s != n) {
            return Err(format!(
                "title {:?}: rendition {:?} has {n} segments, not like the others",
                title.id, r.name
            ));
        }
        segments = Some(n);
        out.push((r, kind));
    }
    if !out.iter().any(|(_, k)| matches!(k, Kind::Video { .. })) {
        return Err(format!("title {:?} has no video rendition", title.id));
    }
    out.sort_by_key(|(r, k)| (matches!(k, Kind::Audio), r.bitrate));
    Ok((out, segments.unwrap_or(0)))
}

/// An HLS media playlist: `segments` segments of the rendition, URIs relative.
pub fn hls_media_playlist(title: &str, rendition: &str, segments: usize) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:{SEGMENT_SECS}\n\
         #EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-MEDIA-SEQUENCE:1\n#EXT-X-INDEPENDENT-SEGMENTS\n\
         #EXT-X-MAP:URI=\"{}\"\n",
        init_id(title, rendition)
    );
    for n in 1..=segments {
        let _ = writeln!(
            s,
            "#EXTINF:{SEGMENT_SECS}.000,\n{}",
            segment_id(title, rendition, n)
        );
    }
    s.push_str("#EXT-X-ENDLIST\n");
    s
}

/// One pathway of a steered manifest: its id and the base URL its objects resolve against
/// (ending in `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pathway {
    /// `PATHWAY-ID` / `serviceLocation` (the appliance id, or `origin`).
    pub id: String,
    /// Base URL ending in `/`, e.g. `http://192.0.2.1:8080/tok/<token>/`.
    pub base: String,
}

/// Escapes text for an XML attribute or element.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The DASH MPD of a playable title. With `pathways`, one `BaseURL` per pathway (with its
/// `serviceLocation`) and, with `steering`, the `ContentSteering` element naming the steering
/// server (`defaultServiceLocation` = the first pathway). Without pathways, URLs are relative.
pub fn dash_mpd(
    title: &Title,
    pathways: &[Pathway],
    steering: Option<&str>,
) -> Result<String, String> {
    let (renditions, segments) = playable(title)?;
    let secs = segments as u32 * SEGMENT_SECS;
    let mut s = String::new();
    let _ = write!(
        s,
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" profiles=\"urn:mpeg:dash:profile:isoff-live:2011\" \
         type=\"static\" mediaPresentationDuration=\"PT{secs}S\" maxSegmentDuration=\"PT{SEGMENT_SECS}S\" \
         minBufferTime=\"PT{SEGMENT_SECS}S\">\n"
    );
    for p in pathways {
        let _ = writeln!(
            s,
            "  <BaseURL serviceLocation=\"{}\">{}</BaseURL>",
            xml_escape(&p.id),
            xml_escape(&p.base)
        );
    }
    if let (Some(uri), Some(first)) = (steering, pathways.first()) {
        let _ = writeln!(
            s,
            "  <ContentSteering defaultServiceLocation=\"{}\" queryBeforeStart=\"false\">{}</ContentSteering>",
            xml_escape(&first.id),
            xml_escape(uri)
        );
    }
    let _ = writeln!(s, "  <Period id=\"0\" start=\"PT0S\">");
    let template = |s: &mut String| {
        let t = xml_escape(&title.id);
        let _ = writeln!(
            s,
            "      <SegmentTemplate timescale=\"1000\" duration=\"{}\" startNumber=\"1\" \
             initialization=\"{t}-$RepresentationID$-init.mp4\" media=\"{t}-$RepresentationID$-$Number%04d$.m4s\"/>",
            SEGMENT_SECS * 1000
        );
    };
    let videos: Vec<_> = renditions
        .iter()
        .filter_map(|(r, k)| match k {
            Kind::Video { width, height } => Some((r, *width, *height)),
            Kind::Audio => None,
        })
        .collect();
    let _ = writeln!(
        s,
        "    <AdaptationSet id=\"0\" contentType=\"video\" mimeType=\"video/mp4\" codecs=\"{VIDEO_CODECS}\" \
         segmentAlignment=\"true\" startWithSAP=\"1\">"
    );
    template(&mut s);
    for (r, w, h) in videos {
        let _ = writeln!(
            s,
            "      <Representation id=\"{}\" bandwidth=\"{}\" width=\"{w}\" height=\"{h}\"/>",
            xml_escape(&r.name),
            r.bitrate
        );
    }
    let _ = writeln!(s, "    </AdaptationSet>");
    if let Some((audio, _)) = renditions.iter().find(|(_, k)| *k == Kind::Audio) {
        let _ = writeln!(
            s,
            "    <AdaptationSet id=\"1\" contentType=\"audio\" mimeType=\"audio/mp4\" codecs=\"{AUDIO_CODECS}\" \
             lang=\"und\" segmentAlignment=\"true\" startWithSAP=\"1\">"
        );
        template(&mut s);
        let _ = writeln!(
            s,
            "      <Representation id=\"{}\" bandwidth=\"{}\" audioSamplingRate=\"48000\"/>",
            xml_escape(&audio.name),
            audio.bitrate
        );
        let _ = writeln!(s, "    </AdaptationSet>");
    }
    s.push_str("  </Period>\n</MPD>\n");
    Ok(s)
}

/// Quotes an HLS attribute value (no `"`, CR or LF may appear in one).
fn hls_quoted(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '"' | '\r' | '\n'))
        .collect()
}

/// The HLS multivariant playlist of a playable title. With `pathways`, one set of variants (and
/// one audio group) per pathway with its `PATHWAY-ID`, URIs absolute under the pathway's base,
/// and with `steering` the `#EXT-X-CONTENT-STEERING` tag. Without pathways, URIs are relative.
pub fn hls_multivariant(
    title: &Title,
    pathways: &[Pathway],
    steering: Option<&str>,
) -> Result<String, String> {
    let (renditions, _) = playable(title)?;
    let mut s = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    if let (Some(uri), Some(first)) = (steering, pathways.first()) {
        let _ = writeln!(
            s,
            "#EXT-X-CONTENT-STEERING:SERVER-URI=\"{}\",PATHWAY-ID=\"{}\"",
            hls_quoted(uri),
            hls_quoted(&first.id)
        );
    }
    let relative = [Pathway {
        id: String::new(),
        base: String::new(),
    }];
    let sets: &[Pathway] = if pathways.is_empty() {
        &relative
    } else {
        pathways
    };
    let audio = renditions.iter().find(|(_, k)| *k == Kind::Audio);
    for p in sets {
        let group = if p.id.is_empty() {
            "aud".to_owned()
        } else {
            format!("aud-{}", hls_quoted(&p.id))
        };
        let base = hls_quoted(&p.base);
        if let Some((a, _)) = audio {
            let _ = writeln!(
                s,
                "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"{group}\",NAME=\"audio\",LANGUAGE=\"und\",DEFAULT=YES,AUTOSELECT=YES,CHANNELS=\"2\",URI=\"{base}{}\"",
                media_playlist_id(&title.id, &a.name)
            );
        }
        for (r, k) in &renditions {
            let Kind::Video { width, height } = k else {
                continue;
            };
            let bw = r.bitrate + audio.map_or(0, |(a, _)| a.bitrate);
            let _ = write!(
                s,
                "#EXT-X-STREAM-INF:BANDWIDTH={bw},RESOLUTION={width}x{height},CODECS=\"{VIDEO_CODECS}{}\"",
                if audio.is_some() {
                    format!(",{AUDIO_CODECS}")
                } else {
                    String::new()
                }
            );
            if audio.is_some() {
                let _ = write!(s, ",AUDIO=\"{group}\"");
            }
            if !p.id.is_empty() {
                let _ = write!(s, ",PATHWAY-ID=\"{}\"", hls_quoted(&p.id));
            }
            let _ = writeln!(s, "\n{base}{}", media_playlist_id(&title.id, &r.name));
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeplane_api::ObjectInfo;

    fn obj(id: String) -> ObjectInfo {
        ObjectInfo {
            id,
            size: 1,
            sha256: "0".repeat(64),
        }
    }

    pub(crate) fn title() -> Title {
        let r = |name: &str, bitrate| Rendition {
            name: name.into(),
            bitrate,
            objects: std::iter::once(init_id("t0001", name))
                .chain((1..=3).map(|n| segment_id("t0001", name, n)))
                .chain(std::iter::once(media_playlist_id("t0001", name)))
                .map(obj)
                .collect(),
        };
        Title {
            id: "t0001".into(),
            renditions: vec![
                r("360p", 700_000),
                r("180p", 250_000),
                r(AUDIO, 64_000),
                Rendition {
                    name: MANIFEST.into(),
                    bitrate: 0,
                    objects: vec![obj("t0001.mpd".into()), obj("t0001.m3u8".into())],
                },
            ],
        }
    }

    #[test]
    fn kinds() {
        assert_eq!(
            kind_of("720p"),
            Some(Kind::Video {
                width: 1280,
                height: 720
            })
        );
        assert_eq!(width_of(180), 320);
        assert_eq!(width_of(540), 960);
        assert_eq!(kind_of("audio"), Some(Kind::Audio));
        assert_eq!(kind_of("hd"), None);
        assert_eq!(kind_of("0p"), None);
    }

    #[test]
    fn playable_orders_and_refuses() {
        let t = title();
        let (r, n) = playable(&t).unwrap();
        let names: Vec<_> = r.iter().map(|(r, _)| r.name.as_str()).collect();
        assert_eq!(names, ["180p", "360p", "audio"]);
        assert_eq!(n, 3);
        let mut bad = title();
        bad.renditions[0].objects.remove(0);
        assert!(playable(&bad).unwrap_err().contains("t0001-360p-init.mp4"));
        let mut bad = title();
        bad.renditions[0].objects.remove(1);
        assert!(playable(&bad).unwrap_err().contains("segments"));
        let mut bad = title();
        bad.renditions[1].name = "low".into();
        assert!(playable(&bad).unwrap_err().contains("not an encoded title"));
    }

    #[test]
    fn media_playlist() {
        let p = hls_media_playlist("t0001", "360p", 2);
        assert!(p.contains("#EXT-X-MAP:URI=\"t0001-360p-init.mp4\"\n"));
        assert!(p.contains("#EXTINF:2.000,\nt0001-360p-0001.m4s\n#EXTINF:2.000,\nt0001-360p-0002.m4s\n#EXT-X-ENDLIST\n"));
    }

    #[test]
    fn steered_manifests_name_every_pathway() {
        let t = title();
        let paths = [
            Pathway {
                id: "emb".into(),
                base: "http://127.0.0.1:1/tok/a~b/".into(),
            },
            Pathway {
                id: "origin".into(),
                base: "http://127.0.0.1:2/tok/a~b/".into(),
            },
        ];
        let uri = "http://c/v1/content-steering?title=t0001&x=1";
        let mpd = dash_mpd(&t, &paths, Some(uri)).unwrap();
        assert!(mpd.contains(
            "<BaseURL serviceLocation=\"emb\">http://127.0.0.1:1/tok/a~b/</BaseURL>\n  \
             <BaseURL serviceLocation=\"origin\">"
        ));
        assert!(mpd.contains("defaultServiceLocation=\"emb\""));
        assert!(mpd.contains("title=t0001&amp;x=1</ContentSteering>"));
        assert!(mpd.contains("mediaPresentationDuration=\"PT6S\""));
        assert!(mpd.contains("<Representation id=\"180p\" bandwidth=\"250000\" width=\"320\""));
        let m3u8 = hls_multivariant(&t, &paths, Some(uri)).unwrap();
        assert!(m3u8.contains(&format!(
            "#EXT-X-CONTENT-STEERING:SERVER-URI=\"{uri}\",PATHWAY-ID=\"emb\""
        )));
        assert_eq!(m3u8.matches("#EXT-X-STREAM-INF").count(), 4);
        assert!(m3u8.contains(
            "AUDIO=\"aud-origin\",PATHWAY-ID=\"origin\"\nhttp://127.0.0.1:2/tok/a~b/t0001-360p.m3u8\n"
        ));
        assert!(m3u8.contains("GROUP-ID=\"aud-emb\""));
        // The static ones: relative, no steering.
        let plain = hls_multivariant(&t, &[], None).unwrap();
        assert!(plain.contains("AUDIO=\"aud\"\nt0001-180p.m3u8\n"));
        assert!(!plain.contains("PATHWAY"));
        assert!(!dash_mpd(&t, &[], None).unwrap().contains("BaseURL"));
    }
}
