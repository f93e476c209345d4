-- =============================================================================
-- 21_render_object_transfers.sql — render: what agents download and upload
-- =============================================================================
-- file_facts: the digest, size and content type of the files jobs and snapshots
-- name (template bundles, media, audio), recorded when the request is checked
-- against the file service. Files never change (a file id always names the same
-- bytes), so the facts are per file id, and AssignTask fills its ObjectRefs from
-- them without calling the file service on the dispatch path.
--
-- object_uploads: every object an agent stored through UploadObject, by the
-- lease that produced it, so a retried upload of the same (task, epoch, kind,
-- frame) with the same SHA-256 answers the first file id instead of storing the
-- bytes again.
-- =============================================================================


-- -----------------------------------------------------------------------------
-- file_facts: what a named input file is
-- -----------------------------------------------------------------------------
CREATE TABLE render.file_facts (
    file_id      uuid        PRIMARY KEY,   -- soft reference: file_mgr.files.id
    sha256       bytea       NOT NULL,
    size_bytes   bigint      NOT NULL,
    content_type text        NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT file_facts_sha256_check CHECK (octet_length(sha256) = 32),
    CONSTRAINT file_facts_size_check CHECK (size_bytes >= 0),
    CONSTRAINT file_facts_content_type_check CHECK (char_length(content_type) <= 255)
);

COMMENT ON TABLE render.file_facts IS 'Digest, size and content type of files named by jobs and snapshots (files are immutable), for AssignTask ObjectRefs.';
COMMENT ON COLUMN render.file_facts.file_id IS 'soft reference: file_mgr.files.id';


-- -----------------------------------------------------------------------------
-- object_uploads: outputs agents stored, by lease
-- -----------------------------------------------------------------------------
CREATE TABLE render.object_uploads (
    frame_job_id uuid        NOT NULL REFERENCES render.frame_jobs (id) ON DELETE CASCADE,
    lease_epoch  bigint      NOT NULL,
    kind         text        NOT NULL,
    frame        integer     NOT NULL,   -- comp frame number for 'frame', -1 otherwise
    sha256       bytea       NOT NULL,
    size_bytes   bigint      NOT NULL,
    file_id      uuid        NOT NULL,   -- soft reference: file_mgr.files.id
    node_id      uuid        NULL REFERENCES render.nodes (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (frame_job_id, lease_epoch, kind, frame),
    CONSTRAINT object_uploads_lease_epoch_check CHECK (lease_epoch > 0),
    CONSTRAINT object_uploads_kind_check CHECK (kind IN ('frame', 'snapshot_image', 'video', 'log', 'crash_report')),
    CONSTRAINT object_uploads_frame_check CHECK ((kind = 'frame') = (frame >= 0) AND frame >= -1),
    CONSTRAINT object_uploads_sha256_check CHECK (octet_length(sha256) = 32),
    CONSTRAINT object_uploads_size_check CHECK (size_bytes >= 0)
);

COMMENT ON TABLE render.object_uploads IS 'Task outputs stored through UploadObject, one per (task, epoch, kind, frame): a retry with the same SHA-256 gets the same file.';
COMMENT ON COLUMN render.object_uploads.file_id IS 'soft reference: file_mgr.files.id';


GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES    IN SCHEMA render TO flatrender_render;
GRANT USAGE, SELECT, UPDATE         ON ALL SEQUENCES IN SCHEMA render TO flatrender_render;
