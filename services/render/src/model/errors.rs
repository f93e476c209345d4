//! Errors of jobs, tasks, attempts and snapshots: the coarse class (the retry policy) and the
//! specific code of render_job.proto, stored lower-case without the prefix in the `error_class` /
//! `error_code` / `error_message` columns.

use flatrender_proto::flatrender::render::v1 as pb;

use crate::model::db_enum::db_enum;

/// Longest error message shown to customers and operators, in characters.
pub const MAX_ERROR_MESSAGE_CHARS: usize = 2000;

db_enum! {
    /// The coarse class of an error: decides the retry policy.
    pub enum ErrorClass: ErrorClass {
        /// The template, the customer's data or an input file: not retried.
        Template = "template" => Template,
        /// The machine: retried on other nodes.
        Machine = "machine" => Machine,
        /// The maximum render time passed: retried.
        Timeout = "timeout" => Timeout,
        /// The work was canceled.
        Canceled = "canceled" => Canceled,
        /// The storage quota would be exceeded (jobs and snapshots only).
        Quota = "quota" => Quota,
        /// The node's lease lapsed (attempts and tasks only).
        Lost = "lost" => Lost,
        /// A bug of ours, no eligible node, or an operator's FailRender.
        Internal = "internal" => Internal,
    }
}

impl ErrorClass {
    /// Allowed in `render_jobs.error_class` (all but LOST).
    pub fn allowed_for_jobs(self) -> bool {
        self != Self::Lost
    }

    /// Allowed in `frame_jobs.error_class` and `frame_job_attempts.error_class` (all but QUOTA).
    pub fn allowed_for_tasks(self) -> bool {
        self != Self::Quota
    }

    /// Allowed in `snapshots.error_class` (TEMPLATE, MACHINE, TIMEOUT, QUOTA, INTERNAL).
    pub fn allowed_for_snapshots(self) -> bool {
        !matches!(self, Self::Canceled | Self::Lost)
    }

    /// Whether a task failing with this class is retried (on another node).
    pub fn is_retried(self) -> bool {
        matches!(self, Self::Machine | Self::Timeout | Self::Lost)
    }
}

db_enum! {
    /// The specific error; each belongs to one [`ErrorClass`] ([`ErrorCode::class`]).
    pub enum ErrorCode: ErrorCode {
        /// TEMPLATE: no comp with the given name.
        CompNotFound = "comp_not_found" => CompNotFound,
        /// TEMPLATE: render-settings or output-module template not found.
        AeTemplateNotFound = "ae_template_not_found" => AeTemplateNotFound,
        /// TEMPLATE: the project does not open.
        ProjectOpenFailed = "project_open_failed" => ProjectOpenFailed,
        /// TEMPLATE: the bundle archive is corrupt or escapes the cache dir.
        BundleInvalid = "bundle_invalid" => BundleInvalid,
        /// TEMPLATE: a font is missing.
        MissingFont = "missing_font" => MissingFont,
        /// TEMPLATE: footage is missing.
        MissingFootage = "missing_footage" => MissingFootage,
        /// TEMPLATE: a script error not attributable to one edit.
        ScriptError = "script_error" => ScriptError,
        /// CANCELED: the task was canceled.
        Canceled = "canceled" => Canceled,
        /// TEMPLATE (data): a LayerEdit's composition or layer does not exist.
        LayerNotFound = "layer_not_found" => LayerNotFound,
        /// TEMPLATE (data): a property path does not resolve.
        PropertyNotFound = "property_not_found" => PropertyNotFound,
        /// TEMPLATE (data): After Effects refused a value.
        ValueRejected = "value_rejected" => ValueRejected,
        /// TEMPLATE (data): media could not be imported.
        MediaUnsupported = "media_unsupported" => MediaUnsupported,
        /// TEMPLATE (data): a frame lies outside the composition.
        FrameOutOfRange = "frame_out_of_range" => FrameOutOfRange,
        /// TEMPLATE (input): a referenced file does not exist or is not visible.
        FileNotFound = "file_not_found" => FileNotFound,
        /// TEMPLATE (input): a file's SHA-256 differs.
        ChecksumMismatch = "checksum_mismatch" => ChecksumMismatch,
        /// MACHINE: After Effects crashed.
        AeCrash = "ae_crash" => AeCrash,
        /// MACHINE: the no-output watchdog fired.
        NoOutputTimeout = "no_output_timeout" => NoOutputTimeout,
        /// MACHINE: an output module failed.
        OutputModuleFailed = "output_module_failed" => OutputModuleFailed,
        /// MACHINE: another After Effects instance blocks aerender.
        AnotherInstance = "another_instance" => AnotherInstance,
        /// MACHINE: the process exited at once.
        InstantExit = "instant_exit" => InstantExit,
        /// MACHINE: not enough free disk.
        DiskFull = "disk_full" => DiskFull,
        /// MACHINE: out of memory.
        OutOfMemory = "out_of_memory" => OutOfMemory,
        /// MACHINE: no usable After Effects install.
        AeUnavailable = "ae_unavailable" => AeUnavailable,
        /// MACHINE: expected frames missing, undecodable or of the wrong size.
        FramesInvalid = "frames_invalid" => FramesInvalid,
        /// MACHINE: a download failed.
        DownloadFailed = "download_failed" => DownloadFailed,
        /// MACHINE: an upload failed.
        UploadFailed = "upload_failed" => UploadFailed,
        /// LOST: the node's lease lapsed.
        LeaseLost = "lease_lost" => LeaseLost,
        /// MACHINE: a failure the agent could not classify.
        UnknownFailure = "unknown_failure" => UnknownFailure,
        /// TIMEOUT: the maximum render time passed.
        MaxRenderTime = "max_render_time" => MaxRenderTime,
        /// MACHINE (assembly): ffmpeg failed or its output does not decode.
        EncodeFailed = "encode_failed" => EncodeFailed,
        /// MACHINE (assembly): ffprobe's frame count or duration differs.
        OutputMismatch = "output_mismatch" => OutputMismatch,
        /// INTERNAL: no eligible node for too long.
        NoEligibleNode = "no_eligible_node" => NoEligibleNode,
        /// QUOTA: the storage quota would be exceeded.
        QuotaExceeded = "quota_exceeded" => QuotaExceeded,
        /// INTERNAL: an operator's FailRender.
        FailedByOperator = "failed_by_operator" => FailedByOperator,
        /// INTERNAL: an aerender usage error or another bug of ours.
        Internal = "internal" => Internal,
    }
}

impl ErrorCode {
    /// The class this code belongs to (render_job.proto writes it before each code).
    pub fn class(self) -> ErrorClass {
        use ErrorCode::*;
        match self {
            CompNotFound | AeTemplateNotFound | ProjectOpenFailed | BundleInvalid | MissingFont | MissingFootage
            | ScriptError | LayerNotFound | PropertyNotFound | ValueRejected | MediaUnsupported | FrameOutOfRange
            | FileNotFound | ChecksumMismatch => ErrorClass::Template,
            Canceled => ErrorClass::Canceled,
            AeCrash | NoOutputTimeout | OutputModuleFailed | AnotherInstance | InstantExit | DiskFull | OutOfMemory
            | AeUnavailable | FramesInvalid | DownloadFailed | UploadFailed | UnknownFailure | EncodeFailed
            | OutputMismatch => ErrorClass::Machine,
            LeaseLost => ErrorClass::Lost,
            MaxRenderTime => ErrorClass::Timeout,
            NoEligibleNode | FailedByOperator | Internal => ErrorClass::Internal,
            QuotaExceeded => ErrorClass::Quota,
        }
    }
}

/// An error as stored (`error_class`, `error_code`, `error_message`) and shown
/// (`render.v1.RenderError`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorInfo {
    /// Coarse class.
    pub class: ErrorClass,
    /// Specific code, when classified.
    pub code: Option<ErrorCode>,
    /// Human-readable message, at most [`MAX_ERROR_MESSAGE_CHARS`] characters.
    pub message: String,
}

impl ErrorInfo {
    /// An error with `code` (its class follows from it) and `message`, cut to
    /// [`MAX_ERROR_MESSAGE_CHARS`] characters, NUL replaced (PostgreSQL refuses it in `text`).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { class: code.class(), code: Some(code), message: clean_message(&message.into()) }
    }

    /// An error of `class` without a code.
    pub fn unclassified(class: ErrorClass, message: impl Into<String>) -> Self {
        Self { class, code: None, message: clean_message(&message.into()) }
    }

    /// From the three columns; `None` when the class is NULL or unknown (no error). An unknown
    /// code reads as none.
    pub fn from_db(class: Option<&str>, code: Option<&str>, message: Option<&str>) -> Option<Self> {
        let class = ErrorClass::from_db(class?)?;
        Some(Self { class, code: code.and_then(ErrorCode::from_db), message: message.unwrap_or_default().to_owned() })
    }

    /// The protobuf form.
    pub fn to_pb(&self) -> pb::RenderError {
        pb::RenderError {
            error_class: self.class.to_pb_i32(),
            code: self.code.map_or(0, ErrorCode::to_pb_i32),
            message: self.message.clone(),
        }
    }
}

fn clean_message(message: &str) -> String {
    super::text::head(message, MAX_ERROR_MESSAGE_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::db_enum::assert_matches_pb;
    use crate::model::testing::check_values;

    fn allowed(filter: impl Fn(ErrorClass) -> bool) -> Vec<String> {
        ErrorClass::ALL.iter().filter(|&&c| filter(c)).map(|c| c.as_db().to_owned()).collect()
    }

    #[test]
    fn enums_match_their_protobuf_twins() {
        assert_matches_pb!(ErrorClass, ErrorClass, "ERROR_CLASS_");
        assert_matches_pb!(ErrorCode, ErrorCode, "ERROR_CODE_");
    }

    #[test]
    fn classes_are_exactly_each_tables_check_list() {
        assert_eq!(allowed(ErrorClass::allowed_for_jobs), check_values("render_jobs_error_class_check"));
        assert_eq!(allowed(ErrorClass::allowed_for_tasks), check_values("frame_jobs_error_class_check"));
        assert_eq!(allowed(ErrorClass::allowed_for_tasks), check_values("frame_job_attempts_error_class_check"));
        assert_eq!(allowed(ErrorClass::allowed_for_snapshots), check_values("snapshots_error_class_check"));
        let mut union: Vec<String> = [
            "render_jobs_error_class_check",
            "frame_jobs_error_class_check",
            "frame_job_attempts_error_class_check",
            "snapshots_error_class_check",
        ]
        .iter()
        .flat_map(|name| check_values(name))
        .collect();
        union.sort();
        union.dedup();
        assert_eq!(union.len(), ErrorClass::ALL.len());
    }

    #[test]
    fn codes_fit_the_column_pattern_and_name_their_class() {
        // error_code ~ '^[a-z][a-z0-9_]{0,63}$'
        for code in ErrorCode::ALL {
            let text = code.as_db();
            assert!(text.len() <= 64 && text.starts_with(|c: char| c.is_ascii_lowercase()), "{text}");
            assert!(text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{text}");
        }
        assert_eq!(ErrorCode::CompNotFound.class(), ErrorClass::Template);
        assert_eq!(ErrorCode::ChecksumMismatch.class(), ErrorClass::Template);
        assert_eq!(ErrorCode::Canceled.class(), ErrorClass::Canceled);
        assert_eq!(ErrorCode::OutputMismatch.class(), ErrorClass::Machine);
        assert_eq!(ErrorCode::LeaseLost.class(), ErrorClass::Lost);
        assert_eq!(ErrorCode::MaxRenderTime.class(), ErrorClass::Timeout);
        assert_eq!(ErrorCode::QuotaExceeded.class(), ErrorClass::Quota);
        assert_eq!(ErrorCode::FailedByOperator.class(), ErrorClass::Internal);
        assert!(ErrorClass::Machine.is_retried() && !ErrorClass::Template.is_retried());
    }

    #[test]
    fn error_info_is_bounded_and_round_trips() {
        let info = ErrorInfo::new(ErrorCode::LayerNotFound, "scene_data.edits[3]: layer \"Title\" not found");
        assert_eq!(info.class, ErrorClass::Template);
        let back = ErrorInfo::from_db(Some("template"), Some("layer_not_found"), Some(&info.message));
        assert_eq!(back.as_ref(), Some(&info));
        let pb = info.to_pb();
        assert_eq!(pb.error_class, pb::ErrorClass::Template as i32);
        assert_eq!(pb.code, pb::ErrorCode::LayerNotFound as i32);
        assert_eq!(ErrorInfo::new(ErrorCode::Internal, "é".repeat(2001)).message.chars().count(), 2000);
        assert_eq!(ErrorInfo::unclassified(ErrorClass::Machine, "a\0b").message, "a\u{FFFD}b");
        assert_eq!(ErrorInfo::unclassified(ErrorClass::Machine, "x").to_pb().code, 0);
        assert_eq!(ErrorInfo::from_db(None, Some("internal"), Some("x")), None);
        assert_eq!(ErrorInfo::from_db(Some("machine"), Some("nope"), None).unwrap().code, None);
    }
}
