//! Real titles (`edgeplane cloud gen-catalog --encode`): ffmpeg makes a test pattern with a
//! visible frame counter (`testsrc`) and a tone, encodes an H.264 ladder and AAC audio into
//! 2-second CMAF segments (its DASH muxer), and this module names the files by the content-id
//! rules of [`crate::cloud::media`], adds the HLS media playlists and the title's static MPD and
//! multivariant playlist, and hashes everything into a catalog title.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;

use crate::cloud::generate::{sha256_hex, title_id};
use crate::cloud::media::{
    self, hls_media_playlist, init_id, media_playlist_id, segment_id, AUDIO, MANIFEST, SEGMENT_SECS,
};
use edgeplane_api::{ObjectInfo, Rendition, Title};

/// One video rung.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VideoRung {
    /// Picture height (the rendition is named `<height>p`; the width is 16:9).
    pub height: u32,
    /// Target bits per second.
    pub bitrate: u64,
}

/// What to encode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodeSpec {
    /// Number of titles (`t0000`, `t0001`, …).
    pub titles: usize,
    /// Seconds per title (a multiple of [`SEGMENT_SECS`]).
    pub seconds: u32,
    /// The video ladder, any order.
    pub ladder: Vec<VideoRung>,
    /// Audio bits per second.
    pub audio_bitrate: u64,
}

impl EncodeSpec {
    /// The CI ladder: 180p 250 kb/s, 360p 700 kb/s, 540p 1.5 Mb/s, 64 kb/s audio.
    pub fn small(titles: usize, seconds: u32) -> EncodeSpec {
        EncodeSpec {
            titles,
            seconds,
            ladder: vec![
                VideoRung {
                    height: 180,
                    bitrate: 250_000,
                },
                VideoRung {
                    height: 360,
                    bitrate: 700_000,
                },
                VideoRung {
                    height: 540,
                    bitrate: 1_500_000,
                },
            ],
            audio_bitrate: 64_000,
        }
    }

    /// Refuses what cannot be encoded.
    pub fn validate(&self) -> Result<(), EncodeError> {
        if self.titles == 0 {
            return Err(EncodeError::Spec("at least one title".into()));
        }
        if self.seconds == 0 || !self.seconds.is_multiple_of(SEGMENT_SECS) || self.seconds > 3600 {
            return Err(EncodeError::Spec(format!(
                "--encode-seconds must be a multiple of {SEGMENT_SECS} from {SEGMENT_SECS} to 3600, not {}",
                self.seconds
            )));
        }
        if self.ladder.is_empty() {
            return Err(EncodeError::Spec("the ladder is empty".into()));
        }
        for r in &self.ladder {
            if r.height < 32 || r.height > 2160 || r.height % 2 != 0 || r.bitrate < 10_000 {
                return Err(EncodeError::Spec(format!(
                    "rung {}p at {} b/s: heights are even, 32 to 2160, bitrates at least 10000",
                    r.height, r.bitrate
                )));
            }
        }
        Ok(())
    }
}

/// Why encoding failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A bad spec.
    #[error("encode: {0}")]
    Spec(String),
    /// ffmpeg could not be run.
    #[error("running ffmpeg ({0}): {1} (scripts/setup.sh installs it)")]
    Spawn(PathBuf, std::io::Error),
    /// ffmpeg failed.
    #[error("ffmpeg failed for {title}: {stderr}")]
    Ffmpeg {
        /// The title.
        title: String,
        /// Its last output.
        stderr: String,
    },
    /// A file ffmpeg should have made is missing, or the scratch directory failed.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EncodeError + '_ {
    move |e| EncodeError::Io(path.to_owned(), e)
}

fn object(id: String, data: Bytes) -> (ObjectInfo, (String, Bytes)) {
    (
        ObjectInfo {
            id: id.clone(),
            size: data.len() as u64,
            sha256: sha256_hex(&data),
        },
        (id, data),
    )
}

/// Encodes title number `index` in `scratch` (emptied first) with `ffmpeg`: the title and
/// every object's bytes.
pub fn encode_title(
    ffmpeg: &Path,
    scratch: &Path,
    index: usize,
    spec: &EncodeSpec,
) -> Result<(Title, Vec<(String, Bytes)>), EncodeError> {
    spec.validate()?;
    let title = title_id(index);
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).map_err(io(scratch))?;
    let mut ladder = spec.ladder.clone();
    ladder.sort_by_key(|r| r.bitrate);
    let top = ladder.iter().map(|r| r.height).max().unwrap_or(360);
    let n = ladder.len();
    // One source scaled to every rung; a tone per title so titles differ.
    let mut filter = format!("[0:v]split={n}");
    for i in 0..n {
        filter.push_str(&format!("[s{i}]"));
    }
    for (i, r) in ladder.iter().enumerate() {
        filter.push_str(&format!(
            ";[s{i}]scale={}:{}[v{i}]",
            media::width_of(r.height),
            r.height
        ));
    }
    let gop = (SEGMENT_SECS * 25).to_string();
    let mut cmd = Command::new(ffmpeg);
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i"])
        .arg(format!(
            "testsrc=size={}x{top}:rate=25:duration={}",
            media::width_of(top),
            spec.seconds
        ))
        .args(["-f", "lavfi", "-i"])
        .arg(format!(
            "sine=frequency={}:sample_rate=48000:duration={}",
            300 + 40 * (index % 20),
            spec.seconds
        ))
        .args(["-filter_complex", &filter]);
    for i in 0..n {
        cmd.args(["-map", &format!("[v{i}]")]);
    }
    cmd.args(["-map", "1:a"]);
    cmd.args([
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-profile:v",
        "main",
        "-level:v",
        "3.1",
        "-pix_fmt",
        "yuv420p",
        "-g",
        &gop,
        "-keyint_min",
        &gop,
        "-sc_threshold",
        "0",
        "-bufsize:v",
        "2M",
    ]);
    for (i, r) in ladder.iter().enumerate() {
        cmd.arg(format!("-b:v:{i}")).arg(r.bitrate.to_string());
        cmd.arg(format!("-maxrate:v:{i}"))
            .arg((r.bitrate * 6 / 5).to_string());
    }
    cmd.args(["-c:a", "aac", "-ac", "2", "-b:a"])
        .arg(spec.audio_bitrate.to_string());
    cmd.args([
        "-f",
        "dash",
        "-seg_duration",
        &SEGMENT_SECS.to_string(),
        "-use_template",
        "1",
        "-use_timeline",
        "0",
        "-init_seg_name",
        "init-$RepresentationID$.mp4",
        "-media_seg_name",
        "seg-$RepresentationID$-$Number%04d$.m4s",
        "-adaptation_sets",
        "id=0,streams=v id=1,streams=a",
    ])
    .arg(scratch.join("ffmpeg.mpd"));
    let out = cmd
        .output()
        .map_err(|e| EncodeError::Spawn(ffmpeg.to_owned(), e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
        return Err(EncodeError::Ffmpeg {
            title,
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    let segments = (spec.seconds / SEGMENT_SECS) as usize;
    let read = |name: String| -> Result<Bytes, EncodeError> {
        let p = scratch.join(name);
        std::fs::read(&p).map(Bytes::from).map_err(io(&p))
    };
    let mut renditions = Vec::new();
    let mut objects = Vec::new();
    // Representation ids are the output stream indexes: video rungs, then audio.
    let names: Vec<(String, u64)> = ladder
        .iter()
        .map(|r| (format!("{}p", r.height), r.bitrate))
        .chain(std::iter::once((AUDIO.to_owned(), spec.audio_bitrate)))
        .collect();
    for (rep, (name, bitrate)) in names.iter().enumerate() {
        let mut infos = Vec::new();
        let (info, o) = object(init_id(&title, name), read(format!("init-{rep}.mp4"))?);
        infos.push(info);
        objects.push(o);
        for s in 1..=segments {
            let (info, o) = object(
                segment_id(&title, name, s),
                read(format!("seg-{rep}-{s:04}.m4s"))?,
            );
            infos.push(info);
            objects.push(o);
        }
        let playlist = hls_media_playlist(&title, name, segments);
        let (info, o) = object(media_playlist_id(&title, name), Bytes::from(playlist));
        infos.push(info);
        objects.push(o);
        renditions.push(Rendition {
            name: name.clone(),
            bitrate: *bitrate,
            objects: infos,
        });
    }
    let mut t = Title {
        id: title.clone(),
        renditions,
    };
    let mpd = media::dash_mpd(&t, &[], None).map_err(EncodeError::Spec)?;
    let m3u8 = media::hls_multivariant(&t, &[], None).map_err(EncodeError::Spec)?;
    let mut infos = Vec::new();
    for (id, text) in [
        (format!("{title}.mpd"), mpd),
        (format!("{title}.m3u8"), m3u8),
    ] {
        let (info, o) = object(id, Bytes::from(text));
        infos.push(info);
        objects.push(o);
    }
    t.renditions.push(Rendition {
        name: MANIFEST.into(),
        bitrate: 0,
        objects: infos,
    });
    let _ = std::fs::remove_dir_all(scratch);
    Ok((t, objects))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_checks() {
        assert!(EncodeSpec::small(3, 30).validate().is_ok());
        let e = EncodeSpec::small(3, 31).validate().unwrap_err();
        assert!(e.to_string().contains("multiple of 2"), "{e}");
        assert!(EncodeSpec::small(0, 30).validate().is_err());
        let mut s = EncodeSpec::small(1, 2);
        s.ladder[0].height = 181;
        assert!(s.validate().unwrap_err().to_string().contains("181p"));
    }

    #[test]
    fn missing_ffmpeg_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("edgeplane-encode-{}", std::process::id()));
        let e = encode_title(
            Path::new("/nonexistent/ffmpeg"),
            &dir,
            0,
            &EncodeSpec::small(1, 2),
        )
        .unwrap_err();
        assert!(e.to_string().contains("setup.sh"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
