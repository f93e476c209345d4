use std::collections::HashMap;

use flatrender_proto::flatrender::common::v1 as common_pb;
use flatrender_proto::flatrender::render::v1 as pb;

use super::*;
use crate::model::output::{OutputFormat, VideoCodec};

const TEMPLATE: &str = "0b6f0c5e-1c1a-4c3e-9a53-5f0e7a1c2d3b";
const MEDIA: &str = "7d4f6a52-8a53-4c16-a0a5-3f1f3e9b2c41";
const AUDIO: &str = "3c1e3a3e-5b6b-4f0e-8a46-2f0f2b8e7d11";
const SCENE: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
const SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn media_edit(layer: &str) -> pb::LayerEdit {
    pb::LayerEdit {
        layer: Some(pb::layer_edit::Layer::LayerName(layer.into())),
        edit: Some(pb::layer_edit::Edit::Media(pb::MediaReplacement { file_id: MEDIA.into(), fit: 0 })),
        ..Default::default()
    }
}

fn text_scene(text: &str) -> pb::SceneData {
    pb::SceneData {
        edits: vec![pb::LayerEdit {
            layer: Some(pb::layer_edit::Layer::LayerName("Title".into())),
            edit: Some(pb::layer_edit::Edit::Text(pb::TextEdit { text: text.into(), ..Default::default() })),
            ..Default::default()
        }],
        custom_data: None,
    }
}

fn segment(composition: &str, frames: &str) -> pb::Segment {
    pb::Segment { composition: composition.into(), frames: frames.into(), ..Default::default() }
}

fn submit() -> pb::SubmitRenderRequest {
    pb::SubmitRenderRequest {
        template_file_id: TEMPLATE.into(),
        template_sha256: SHA.into(),
        segments: vec![
            pb::Segment {
                scene_data: Some(pb::SceneData { edits: vec![media_edit("Photo")], custom_data: None }),
                scene_id: SCENE.into(),
                ..segment("Intro", "0-99")
            },
            segment("Scene", "1,3,7-9"),
        ],
        scene_data: Some(text_scene("Hello")),
        output: None,
        audio_tracks: vec![pb::AudioTrack {
            kind: pb::AudioTrackKind::Voiceover as i32,
            file_id: AUDIO.into(),
            volume: 1.0,
            ..Default::default()
        }],
        has_voiceover: true,
        idempotency_key: "order-1234".into(),
        template_id: String::new(),
        template_version_id: String::new(),
        saved_project_id: String::new(),
        labels: [("campaign".to_owned(), "spring".to_owned())].into(),
    }
}

fn accepted(change: impl FnOnce(&mut pb::SubmitRenderRequest)) -> RenderRequest {
    let mut request = submit();
    change(&mut request);
    RenderRequest::try_from(request).unwrap()
}

fn refused(change: impl FnOnce(&mut pb::SubmitRenderRequest)) -> String {
    let mut request = submit();
    change(&mut request);
    RenderRequest::try_from(request).unwrap_err().to_string()
}

#[test]
fn a_request_is_validated_and_expanded() {
    let request = accepted(|_| {});
    let stored: Vec<_> =
        request.segments.iter().map(|s| (s.request_index, s.composition.as_str(), s.range.to_string())).collect();
    assert_eq!(
        stored,
        [(0, "Intro", "0-99".into()), (1, "Scene", "1".into()), (1, "Scene", "3".into()), (1, "Scene", "7-9".into())]
    );
    assert_eq!(request.frames_total(), 105);
    assert_eq!(request.segments[0].scene_id, Some(SCENE.parse().unwrap()));
    assert_eq!(request.segments[0].scene_data.media_file_ids(), [MEDIA.parse::<Uuid>().unwrap()]);
    assert!(request.segments[1].scene_data.is_empty());
    assert_eq!(request.output.format, OutputFormat::Mp4);
    assert_eq!(request.output.video_codec, VideoCodec::H264);
    assert_eq!(request.idempotency_key, "order-1234");
    assert_eq!(request.template_sha256.to_hex(), SHA);
    assert_eq!(request.labels.iter().collect::<Vec<_>>(), [("campaign", "spring")]);
}

#[test]
fn file_refs_name_their_fields() {
    let request = accepted(|r| {
        r.segments[1].scene_data = Some(pb::SceneData { edits: vec![media_edit("A")], custom_data: None })
    });
    let refs: Vec<_> = request.file_refs().into_iter().map(|r| (r.field, r.file_id.to_string())).collect();
    assert_eq!(
        refs,
        [
            ("template_file_id".to_owned(), TEMPLATE.to_owned()),
            ("segments[0].scene_data.edits[0].media.file_id".into(), MEDIA.into()),
            ("segments[1].scene_data.edits[0].media.file_id".into(), MEDIA.into()),
            ("audio_tracks[0].file_id".into(), AUDIO.into()),
        ]
    );
}

#[test]
fn ids_and_digests_are_checked() {
    assert_eq!(refused(|r| r.template_file_id.clear()), "template_file_id: is required");
    assert_eq!(
        refused(|r| r.template_file_id = TEMPLATE.to_uppercase()),
        "template_file_id: must be a UUID in canonical lower-case form"
    );
    assert_eq!(
        refused(|r| r.template_sha256 = SHA.to_uppercase()),
        "template_sha256: must be 64 lower-case hex characters"
    );
    assert_eq!(refused(|r| r.template_sha256.clear()), "template_sha256: is required");
    assert_eq!(refused(|r| r.template_id = "x".into()), "template_id: must be a UUID in canonical lower-case form");
    assert_eq!(
        refused(|r| r.template_version_id = "x".into()),
        "template_version_id: must be a UUID in canonical lower-case form"
    );
    assert_eq!(
        refused(|r| r.saved_project_id = "x".into()),
        "saved_project_id: must be a UUID in canonical lower-case form"
    );
    assert_eq!(
        refused(|r| r.segments[1].scene_id = "x".into()),
        "segments[1].scene_id: must be a UUID in canonical lower-case form"
    );
    let ids = accepted(|r| {
        r.template_id = SCENE.into();
        r.template_version_id = MEDIA.into();
        r.saved_project_id = AUDIO.into();
    });
    assert_eq!((ids.template_id, ids.saved_project_id), (Some(SCENE.parse().unwrap()), Some(AUDIO.parse().unwrap())));
}

#[test]
fn segments_are_bounded_before_and_after_expansion() {
    assert_eq!(refused(|r| r.segments.clear()), "segments: must have at least one segment");
    let hundred: Vec<_> = (0..100).map(|i| segment("C", &i.to_string())).collect();
    assert_eq!(accepted(|r| r.segments = hundred.clone()).segments.len(), 100);
    let mut hundred_one = hundred.clone();
    hundred_one.push(segment("C", "1"));
    assert_eq!(refused(|r| r.segments = hundred_one), "segments: must have at most 100 segments");
    let items: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(accepted(|r| r.segments = vec![segment("C", &items.join(","))]).segments.len(), 100);
    let mut expanded = hundred[..99].to_vec();
    expanded.push(segment("C", "5,6"));
    assert_eq!(
        refused(|r| r.segments = expanded),
        "segments[99].frames: the job would have more than 100 segments (each frame item is one)"
    );
    assert_eq!(refused(|r| r.segments[1].frames = "9-3".into()), "segments[1].frames: reversed range 9-3");
    assert_eq!(
        refused(|r| r.segments[0].frames = "1-10,5-20".into()),
        "segments[0].frames: overlapping items \"1-10\" and \"5-20\""
    );
    assert_eq!(refused(|r| r.segments[0].frames.clear()), "segments[0].frames: must not be empty");
    assert_eq!(refused(|r| r.segments[1].composition.clear()), "segments[1].composition: must not be empty");
    assert_eq!(
        refused(|r| r.segments[1].composition = "c".repeat(256)),
        "segments[1].composition: must be at most 255 characters"
    );
    assert_eq!(accepted(|r| r.segments[1].composition = "c".repeat(255)).segments[1].composition.len(), 255);
    assert_eq!(
        refused(|r| r.segments[0].scene_data =
            Some(pb::SceneData { edits: vec![pb::LayerEdit::default()], custom_data: None })),
        "segments[0].scene_data.edits[0]: no layer (set layer_name or layer_index)"
    );
}

#[test]
fn the_job_total_fits_the_frames_total_column() {
    let at_most = accepted(|r| r.segments = vec![segment("C", "1-2147483647")]);
    assert_eq!(at_most.frames_total(), i32::MAX);
    assert_eq!(
        refused(|r| r.segments = vec![segment("C", "0-2147483647")]),
        "segments: must have at most 2147483647 frames in all"
    );
    assert_eq!(
        refused(|r| r.segments = vec![segment("C", "0-1073741823"), segment("D", "0-1073741824")]),
        "segments: must have at most 2147483647 frames in all"
    );
}

#[test]
fn scene_output_and_audio_are_checked() {
    let bad_scene = pb::SceneData { edits: vec![pb::LayerEdit::default(); 2], custom_data: None };
    assert_eq!(
        refused(|r| r.scene_data = Some(bad_scene)),
        "scene_data.edits[0]: no layer (set layer_name or layer_index)"
    );
    let mov_prores = pb::OutputSettings {
        format: pb::OutputFormat::Webm as i32,
        video_codec: pb::VideoCodec::Prores4444 as i32,
        ..Default::default()
    };
    assert_eq!(
        refused(|r| r.output = Some(mov_prores)),
        "output.video_codec: prores_4444 does not suit the webm format (allowed: vp9)"
    );
    let gif = pb::OutputSettings { format: pb::OutputFormat::Gif as i32, ..Default::default() };
    assert_eq!(refused(|r| r.output = Some(gif)), "audio_tracks: must be empty: a GIF export has no audio");
    let silent_gif = accepted(|r| {
        r.output = Some(gif);
        r.audio_tracks.clear();
        r.has_voiceover = false;
    });
    assert_eq!(silent_gif.output.video_codec, VideoCodec::Gif);
    assert_eq!(refused(|r| r.audio_tracks[0].volume = 5.0), "audio_tracks[0].volume: must be between 0 and 4");
    let music = pb::AudioTrack { kind: pb::AudioTrackKind::Music as i32, ..submit().audio_tracks[0].clone() };
    assert_eq!(
        accepted(|r| r.audio_tracks = vec![music.clone(); 31].into_iter().chain(submit().audio_tracks).collect())
            .audio_tracks
            .len(),
        32
    );
    assert_eq!(
        refused(|r| r.audio_tracks.extend(vec![music.clone(); 32])),
        "audio_tracks: must have at most 32 tracks"
    );
    assert_eq!(refused(|r| r.has_voiceover = false), "has_voiceover: is false but audio_tracks[0] is a voiceover");
    assert_eq!(refused(|r| r.audio_tracks = vec![music]), "has_voiceover: is true but no audio track is a voiceover");
}

#[test]
fn idempotency_key_and_labels_are_checked() {
    assert_eq!(refused(|r| r.idempotency_key.clear()), "idempotency_key: is required");
    assert_eq!(
        refused(|r| r.idempotency_key = "k".repeat(129)),
        "idempotency_key: must be 1..=128 printable ASCII characters"
    );
    assert_eq!(
        refused(|r| r.idempotency_key = "clé".into()),
        "idempotency_key: must be 1..=128 printable ASCII characters"
    );
    assert_eq!(accepted(|r| r.idempotency_key = "k".repeat(128)).idempotency_key.len(), 128);
    assert_eq!(
        refused(|r| r.labels = [("Bad".into(), "x".into())].into()),
        "labels: key \"Bad\" must be 1..=63 characters of [a-z0-9_.-]"
    );
    let many: HashMap<String, String> = (0..17).map(|i| (format!("k{i}"), String::new())).collect();
    assert_eq!(refused(|r| r.labels = many), "labels: must have at most 16 entries");
}

#[test]
fn the_digest_ignores_the_key_and_normalization_but_nothing_else() {
    let base = accepted(|_| {}).request_digest();
    assert_eq!(accepted(|r| r.idempotency_key = "another".into()).request_digest(), base);
    assert_eq!(accepted(|r| r.segments[0].frames = " 0 - 99 ".into()).request_digest(), base);
    assert_eq!(
        accepted(|r| r.output = Some(pb::OutputSettings { format: pb::OutputFormat::Mp4 as i32, ..Default::default() }))
            .request_digest(),
        base
    );
    // The normalized form converts back to the same request digest.
    let normalized = RenderRequest::try_from(accepted(|_| {}).to_pb()).unwrap();
    assert_eq!(normalized.request_digest(), base);
    assert_eq!(normalized.segments.len(), 4);
    // Labels in any order digest alike (prost encodes maps in hash order).
    let many: HashMap<String, String> = (0..16).map(|i| (format!("k{i}"), format!("v{i}"))).collect();
    let labelled = accepted(|r| r.labels = many.clone()).request_digest();
    for _ in 0..5 {
        // Each new HashMap has its own random order.
        let reinserted: HashMap<String, String> = many.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(accepted(|r| r.labels = reinserted).request_digest(), labelled);
    }

    let changes: Vec<fn(&mut pb::SubmitRenderRequest)> = vec![
        |r| r.template_file_id = MEDIA.into(),
        |r| r.template_sha256 = "0".repeat(64),
        |r| r.segments[0].frames = "0-98".into(),
        |r| r.segments[0].composition = "Intro 2".into(),
        |r| r.segments[0].scene_id.clear(),
        |r| r.segments.swap(0, 1),
        |r| r.scene_data = Some(text_scene("Hello!")),
        |r| r.scene_data = None,
        |r| r.output = Some(pb::OutputSettings { fps: 30.0, ..Default::default() }),
        |r| r.audio_tracks[0].volume = 0.5,
        |r| r.template_id = SCENE.into(),
        |r| r.labels.clear(),
        |r| r.labels = [("campaign".to_owned(), "autumn".to_owned())].into(),
        |r| r.labels = [("campaig".to_owned(), "nspring".to_owned())].into(),
    ];
    let mut seen = vec![base];
    for (i, change) in changes.iter().enumerate() {
        let digest = accepted(*change).request_digest();
        assert!(!seen.contains(&digest), "change {i} kept the digest");
        seen.push(digest);
    }
}

fn snapshot() -> pb::RequestSnapshotRequest {
    pb::RequestSnapshotRequest {
        template_file_id: TEMPLATE.into(),
        template_sha256: SHA.into(),
        composition: "Intro".into(),
        frame: 42,
        scene_data: Some(pb::SceneData { edits: vec![media_edit("Photo")], custom_data: None }),
        resolution: Some(common_pb::Resolution { width: 1280, height: 720 }),
        format: 0,
        template_version_id: String::new(),
    }
}

fn snapshot_refused(change: impl FnOnce(&mut pb::RequestSnapshotRequest)) -> String {
    let mut request = snapshot();
    change(&mut request);
    SnapshotRequest::try_from(request).unwrap_err().to_string()
}

#[test]
fn snapshot_requests_are_validated() {
    let request = SnapshotRequest::try_from(snapshot()).unwrap();
    assert_eq!(request.format, ImageFormat::Png);
    assert_eq!(request.resolution.map(|r| (r.width(), r.height())), Some((1280, 720)));
    let refs: Vec<_> = request.file_refs().into_iter().map(|r| r.field).collect();
    assert_eq!(refs, ["template_file_id", "scene_data.edits[0].media.file_id"]);
    assert_eq!(snapshot_refused(|r| r.template_file_id.clear()), "template_file_id: is required");
    assert_eq!(
        snapshot_refused(|r| r.template_sha256 = "abc".into()),
        "template_sha256: must be 64 lower-case hex characters"
    );
    assert_eq!(snapshot_refused(|r| r.composition = " ".into()), "composition: must not be empty");
    assert_eq!(snapshot_refused(|r| r.composition = "c".repeat(256)), "composition: must be at most 255 characters");
    assert_eq!(snapshot_refused(|r| r.frame = -1), "frame: must not be negative");
    assert_eq!(
        snapshot_refused(|r| r.resolution = Some(common_pb::Resolution { width: 3842, height: 2160 })),
        "resolution: must be at most 3840×2160 for a snapshot"
    );
    assert_eq!(
        snapshot_refused(|r| r.resolution = Some(common_pb::Resolution { width: 2160, height: 2162 })),
        "resolution: must be at most 3840×2160 for a snapshot"
    );
    assert_eq!(
        snapshot_refused(|r| r.resolution = Some(common_pb::Resolution { width: 17, height: 720 })),
        "resolution.width: must be an even number in 16..=7680"
    );
    assert_eq!(snapshot_refused(|r| r.format = 9), "format: unknown value 9");
    assert_eq!(
        snapshot_refused(|r| r.template_version_id = "v".into()),
        "template_version_id: must be a UUID in canonical lower-case form"
    );
    let mut max = snapshot();
    max.resolution = Some(common_pb::Resolution { width: 3840, height: 2160 });
    max.frame = i32::MAX;
    assert!(SnapshotRequest::try_from(max).is_ok());
}

#[test]
fn snapshot_cache_keys_follow_the_rendered_inputs() {
    let key = |change: fn(&mut pb::RequestSnapshotRequest)| {
        let mut request = snapshot();
        change(&mut request);
        SnapshotRequest::try_from(request).unwrap().cache_key()
    };
    let base = key(|_| {});
    assert_eq!(key(|r| r.format = pb::ImageFormat::Png as i32), base, "PNG is the default");
    assert_eq!(key(|r| r.template_version_id = SCENE.into()), base, "the version does not change the pixels");
    assert_ne!(key(|r| r.format = pb::ImageFormat::Webp as i32), base);
    assert_ne!(key(|r| r.resolution = None), base);
    assert_ne!(key(|r| r.frame = 43), base);
    assert_ne!(key(|r| r.scene_data = None), base);
}
