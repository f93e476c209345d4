//! File kinds and service names: database text, protobuf enum, and back.

use flatrender_kit::auth::ServiceName;
use flatrender_proto::flatrender::file::v1 as pb;

use crate::error::{FileError, Result};

/// What a file is for (`files.kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// An After Effects template bundle.
    TemplateBundle,
    /// An image or video used in scenes.
    Asset,
    /// Music or a sound effect.
    Audio,
    /// A voiceover.
    Voiceover,
    /// Frames of a rendered chunk (temporary).
    RenderChunk,
    /// A one-frame still preview.
    Snapshot,
    /// A finished video.
    Export,
    /// Anything else.
    Other,
}

impl FileKind {
    /// Every kind.
    pub const ALL: [Self; 8] = [
        Self::TemplateBundle,
        Self::Asset,
        Self::Audio,
        Self::Voiceover,
        Self::RenderChunk,
        Self::Snapshot,
        Self::Export,
        Self::Other,
    ];

    /// The database's (and events') name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TemplateBundle => "template_bundle",
            Self::Asset => "asset",
            Self::Audio => "audio",
            Self::Voiceover => "voiceover",
            Self::RenderChunk => "render_chunk",
            Self::Snapshot => "snapshot",
            Self::Export => "export",
            Self::Other => "other",
        }
    }

    /// The kind stored as `text`; unknown text (impossible under the CHECK) reads as OTHER.
    pub fn parse(text: &str) -> Self {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text).unwrap_or(Self::Other)
    }

    /// The proto enum value.
    pub fn to_proto(self) -> pb::FileKind {
        match self {
            Self::TemplateBundle => pb::FileKind::TemplateBundle,
            Self::Asset => pb::FileKind::Asset,
            Self::Audio => pb::FileKind::Audio,
            Self::Voiceover => pb::FileKind::Voiceover,
            Self::RenderChunk => pb::FileKind::RenderChunk,
            Self::Snapshot => pb::FileKind::Snapshot,
            Self::Export => pb::FileKind::Export,
            Self::Other => pb::FileKind::Other,
        }
    }

    /// A kind from a request; `None` for UNSPECIFIED (the caller decides what that means).
    pub fn from_proto(field: &str, value: i32) -> Result<Option<Self>> {
        let kind = pb::FileKind::try_from(value).map_err(|_| FileError::invalid(field, "is not a file kind"))?;
        Ok(match kind {
            pb::FileKind::Unspecified => None,
            pb::FileKind::TemplateBundle => Some(Self::TemplateBundle),
            pb::FileKind::Asset => Some(Self::Asset),
            pb::FileKind::Audio => Some(Self::Audio),
            pb::FileKind::Voiceover => Some(Self::Voiceover),
            pb::FileKind::RenderChunk => Some(Self::RenderChunk),
            pb::FileKind::Snapshot => Some(Self::Snapshot),
            pb::FileKind::Export => Some(Self::Export),
            pb::FileKind::Other => Some(Self::Other),
        })
    }
}

/// A service as the proto enum.
pub fn service_to_proto(service: ServiceName) -> pb::ServiceName {
    match service {
        ServiceName::Identity => pb::ServiceName::Identity,
        ServiceName::Content => pb::ServiceName::Content,
        ServiceName::Studio => pb::ServiceName::Studio,
        ServiceName::Render => pb::ServiceName::Render,
        ServiceName::File => pb::ServiceName::File,
        ServiceName::Notification => pb::ServiceName::Notification,
        // Its credential reaches no file method (kit::auth::GATEWAY_METHODS).
        ServiceName::Gateway => pb::ServiceName::Unspecified,
    }
}

/// A service stored as text (`source_service`, `retained_by`), as the proto enum value.
pub fn service_from_proto(text: Option<&str>) -> i32 {
    text.and_then(ServiceName::parse).map_or(pb::ServiceName::Unspecified, service_to_proto) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for kind in FileKind::ALL {
            assert_eq!(FileKind::parse(kind.as_str()), kind);
            assert_eq!(FileKind::from_proto("k", kind.to_proto() as i32).unwrap(), Some(kind));
        }
        assert_eq!(FileKind::from_proto("k", 0).unwrap(), None);
        assert!(FileKind::from_proto("k", 99).is_err());
    }
}
