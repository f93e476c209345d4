-- =============================================================================
-- 00_setup.sql — schemas, service roles, privileges and shared infrastructure
-- =============================================================================
--
-- RECIPE: one database, one schema and one LOGIN role per service
-- -----------------------------------------------------------------------------
--   service        role                      schema
--   identity       flatrender_identity       identity
--   content        flatrender_content        content
--   studio         flatrender_studio         studio
--   render         flatrender_render         render
--   file           flatrender_file           file_mgr
--   notification   flatrender_notification   notification
--   (all)          -                         platform   (shared: updated_at trigger, event outbox)
--
-- * The migrating user (the one running these files: `flatrender migrate` or
--   `psql -v ON_ERROR_STOP=1 -f`) owns every table. It needs CREATE on the
--   database and either SUPERUSER or CREATEROLE. When it is not a superuser it
--   is made a member of every service role, so that it (or the all-in-one
--   `flatrender --target all` process connecting as it) can `SET ROLE
--   flatrender_<service>`.
-- * Roles are created WITHOUT a password: nobody can log in as them until an
--   operator sets one, once per cluster (roles are cluster-wide):
--       ALTER ROLE flatrender_identity     PASSWORD '...';
--       ALTER ROLE flatrender_content      PASSWORD '...';
--       ALTER ROLE flatrender_studio       PASSWORD '...';
--       ALTER ROLE flatrender_render       PASSWORD '...';
--       ALTER ROLE flatrender_file         PASSWORD '...';
--       ALTER ROLE flatrender_notification PASSWORD '...';
--   (with password_encryption = scram-sha-256, and a `host ... scram-sha-256`
--   line in pg_hba.conf). In psql, `\password flatrender_identity` does the
--   same without the password reaching the server log or shell history.
--   Nothing else is needed: CONNECT on the database is granted to PUBLIC.
-- * Each service connects as its own role, e.g.
--       postgres://flatrender_render:<password>@db:5432/flatrender
--   or, in one process, connects as the migrating user and runs
--   `SET ROLE flatrender_render` on every new pooled connection.
--   Services always schema-qualify names (render.frame_jobs, platform.outbox);
--   they do not rely on search_path.
-- * What a service role may do:
--     - its own schema: USAGE; SELECT/INSERT/UPDATE/DELETE on every table
--       (present and future, via ALTER DEFAULT PRIVILEGES below plus explicit
--       grants at the end of each service's files); USAGE/SELECT/UPDATE on its
--       sequences; EXECUTE on its functions;
--     - platform: USAGE; SELECT+INSERT on platform.outbox; SELECT/INSERT/UPDATE
--       on platform.outbox_consumers; EXECUTE on platform.set_updated_at();
--     - nothing at all in any other service's schema.
-- * Several databases of one cluster may be migrated at the same time (tests),
--   so role creation and membership grants tolerate a concurrent creator.
-- * Later files (15_...) that add tables to a service schema end with the same
--   `GRANT ... ON ALL TABLES/SEQUENCES IN SCHEMA` lines as the files here.
--
-- These files must run both in autocommit mode and as one transaction per
-- file, so they contain no BEGIN/COMMIT, no psql meta-commands, no
-- CREATE INDEX CONCURRENTLY and no extensions (gen_random_uuid() is core).
-- =============================================================================


-- -----------------------------------------------------------------------------
-- Schemas
-- -----------------------------------------------------------------------------
-- IF NOT EXISTS: the Rust migrator may already have created `platform` for its
-- own bookkeeping table (platform.schema_migrations) before running this file.
CREATE SCHEMA IF NOT EXISTS platform;
CREATE SCHEMA IF NOT EXISTS identity;
CREATE SCHEMA IF NOT EXISTS content;
CREATE SCHEMA IF NOT EXISTS studio;
CREATE SCHEMA IF NOT EXISTS render;
CREATE SCHEMA IF NOT EXISTS file_mgr;
CREATE SCHEMA IF NOT EXISTS notification;

COMMENT ON SCHEMA platform     IS 'Shared infrastructure: the updated_at trigger function and the transactional event outbox.';
COMMENT ON SCHEMA identity     IS 'Identity service: tenants, users, auth, plans, payments, gamification.';
COMMENT ON SCHEMA content      IS 'Content service: taxonomy, templates, scenes, characters, presets, CMS.';
COMMENT ON SCHEMA studio       IS 'Studio service: saved projects with their scenes and audio.';
COMMENT ON SCHEMA render       IS 'Render orchestrator: nodes, jobs, frame-job queue, snapshots, exports.';
COMMENT ON SCHEMA file_mgr     IS 'File service: files, folders, quotas, uploads, cleanup.';
COMMENT ON SCHEMA notification IS 'Notification service: notifications, deliveries, preferences.';

-- Nobody but the owner and the granted roles may touch these schemas.
REVOKE ALL ON SCHEMA platform, identity, content, studio, render, file_mgr, notification FROM PUBLIC;


-- -----------------------------------------------------------------------------
-- Service roles (cluster-wide; idempotent and safe against a concurrent creator)
-- -----------------------------------------------------------------------------
-- Two databases migrated at once both see "role missing"; the second CREATE ROLE
-- then waits for the first transaction and fails with unique_violation (or
-- duplicate_object if the first had already committed). Either means "exists".
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['flatrender_identity', 'flatrender_content', 'flatrender_studio',
                             'flatrender_render', 'flatrender_file', 'flatrender_notification']
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION', r);
            EXCEPTION
                WHEN duplicate_object OR unique_violation THEN
                    NULL;  -- created concurrently by another migration: fine
            END;
        END IF;
    END LOOP;
END
$$;

-- A non-superuser migrating user becomes a member of each role so it can
-- SET ROLE to it (a superuser can SET ROLE to anything already).
DO $$
DECLARE
    r text;
BEGIN
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        RETURN;
    END IF;
    FOREACH r IN ARRAY ARRAY['flatrender_identity', 'flatrender_content', 'flatrender_studio',
                             'flatrender_render', 'flatrender_file', 'flatrender_notification']
    LOOP
        IF NOT pg_catalog.pg_has_role(current_user, r, 'MEMBER') THEN
            BEGIN
                EXECUTE format('GRANT %I TO %I', r, current_user);
            EXCEPTION
                WHEN duplicate_object OR unique_violation THEN
                    NULL;  -- granted concurrently by another migration: fine
                WHEN insufficient_privilege THEN
                    -- Roles pre-created by an operator and no CREATEROLE here:
                    -- migrating still works (owners may grant to any role);
                    -- only SET ROLE from this user will not.
                    RAISE WARNING 'cannot grant % to %: % (run GRANT % TO % as an administrator if this user must SET ROLE)',
                        r, current_user, SQLERRM, r, current_user;
            END;
        END IF;
    END LOOP;
END
$$;


-- -----------------------------------------------------------------------------
-- Privileges on each service's own schema
-- -----------------------------------------------------------------------------
-- USAGE now; tables, sequences and functions through default privileges, which
-- apply to every object the migrating user creates later in that schema
-- (including monthly partitions created by the ensure_* functions, which run
-- as their owner). Each service's files also end with explicit
-- GRANT ... ON ALL TABLES IN SCHEMA, so the grants hold even when a later file
-- is applied by a different user than this one.
GRANT USAGE ON SCHEMA identity     TO flatrender_identity;
GRANT USAGE ON SCHEMA content      TO flatrender_content;
GRANT USAGE ON SCHEMA studio       TO flatrender_studio;
GRANT USAGE ON SCHEMA render       TO flatrender_render;
GRANT USAGE ON SCHEMA file_mgr     TO flatrender_file;
GRANT USAGE ON SCHEMA notification TO flatrender_notification;

ALTER DEFAULT PRIVILEGES IN SCHEMA identity     GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES    TO flatrender_identity;
ALTER DEFAULT PRIVILEGES IN SCHEMA identity     GRANT USAGE, SELECT, UPDATE         ON SEQUENCES TO flatrender_identity;
ALTER DEFAULT PRIVILEGES IN SCHEMA identity     GRANT EXECUTE                       ON FUNCTIONS TO flatrender_identity;

ALTER DEFAULT PRIVILEGES IN SCHEMA content      GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES    TO flatrender_content;
ALTER DEFAULT PRIVILEGES IN SCHEMA content      GRANT USAGE, SELECT, UPDATE         ON SEQUENCES TO flatrender_content;
ALTER DEFAULT PRIVILEGES IN SCHEMA content      GRANT EXECUTE                       ON FUNCTIONS TO flatrender_content;

ALTER DEFAULT PRIVILEGES IN SCHEMA studio       GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES    TO flatrender_studio;
ALTER DEFAULT PRIVILEGES IN SCHEMA studio       GRANT USAGE, SELECT, UPDATE         ON SEQUENCES TO flatrender_studio;
ALTER DEFAULT PRIVILEGES IN SCHEMA studio       GRANT EXECUTE                       ON FUNCTIONS TO flatrender_studio;

ALTER DEFAULT PRIVILEGES IN SCHEMA render       GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES    TO flatrender_render;
ALTER DEFAULT PRIVILEGES IN SCHEMA render       GRANT USAGE, SELECT, UPDATE         ON SEQUENCES TO flatrender_render;
ALTER DEFAULT PRIVILEGES IN SCHEMA render       GRANT EXECUTE                       ON FUNCTIONS TO flatrender_render;

ALTER DEFAULT PRIVILEGES IN SCHEMA file_mgr     GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES    TO flatrender_file;
ALTER DEFAULT PRIVILEGES IN SCHEMA file_mgr     GRANT USAGE, SELECT, UPDATE         ON SEQUENCES TO flatrender_file;
ALTER DEFAULT PRIVILEGES IN SCHEMA file_mgr     GRANT EXECUTE                       ON FUNCTIONS TO flatrender_file;

ALTER DEFAULT PRIVILEGES IN SCHEMA notification GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES    TO flatrender_notification;
ALTER DEFAULT PRIVILEGES IN SCHEMA notification GRANT USAGE, SELECT, UPDATE         ON SEQUENCES TO flatrender_notification;
ALTER DEFAULT PRIVILEGES IN SCHEMA notification GRANT EXECUTE                       ON FUNCTIONS TO flatrender_notification;


-- =============================================================================
-- platform: shared infrastructure
-- =============================================================================
-- No ALTER DEFAULT PRIVILEGES here on purpose: the migrator later creates
-- platform.schema_migrations, on which service roles must get nothing.

-- -----------------------------------------------------------------------------
-- updated_at maintenance: every table with an updated_at column has
--   CREATE TRIGGER set_updated_at BEFORE UPDATE ON <table>
--       FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();
-- -----------------------------------------------------------------------------
CREATE FUNCTION platform.set_updated_at()
    RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

COMMENT ON FUNCTION platform.set_updated_at() IS 'BEFORE UPDATE row trigger: sets NEW.updated_at = now().';

-- -----------------------------------------------------------------------------
-- Monthly partitions: the one implementation behind each schema's
-- ensure_*_partitions() wrapper. Creates the partitions <table>_YYYY_MM of a
-- table partitioned by range on a timestamptz, for the current UTC month up to
-- months_ahead months ahead, and returns how many it created. Idempotent;
-- concurrent callers serialize on a transaction-level advisory lock, and a
-- partition created meanwhile is simply skipped. Runs with its caller's rights:
-- only the SECURITY DEFINER wrappers (owned by the table owner) call it.
-- -----------------------------------------------------------------------------
CREATE FUNCTION platform.create_monthly_partitions(parent regclass, months_ahead integer)
    RETURNS integer
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- Month boundaries are UTC calendar months.
    first_month   date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    parent_schema text;
    parent_name   text;
    month_start   date;
    part_name     text;
    created       integer := 0;
BEGIN
    IF months_ahead IS NULL OR months_ahead < 0 OR months_ahead > 120 THEN
        RAISE EXCEPTION 'months_ahead must be between 0 and 120, got %', months_ahead
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT n.nspname, c.relname INTO parent_schema, parent_name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = parent AND c.relkind = 'p';
    IF parent_name IS NULL THEN
        RAISE EXCEPTION '% is not a partitioned table', parent USING ERRCODE = 'wrong_object_type';
    END IF;

    PERFORM pg_advisory_xact_lock(hashtextextended(parent_schema || '.' || parent_name, 0));

    FOR i IN 0 .. months_ahead LOOP
        month_start := (first_month + make_interval(months => i))::date;
        part_name := parent_name || '_' || to_char(month_start, 'YYYY_MM');
        CONTINUE WHEN to_regclass(format('%I.%I', parent_schema, part_name)) IS NOT NULL;
        BEGIN
            EXECUTE format(
                'CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L)',
                parent_schema, part_name, parent_schema, parent_name,
                to_char(month_start, 'YYYY-MM-DD') || ' 00:00:00+00',
                to_char((month_start + interval '1 month')::date, 'YYYY-MM-DD') || ' 00:00:00+00');
            created := created + 1;
        EXCEPTION
            WHEN duplicate_table OR unique_violation THEN
                NULL;  -- created by someone not holding the advisory lock
        END;
    END LOOP;
    RETURN created;
END
$$;

REVOKE ALL ON FUNCTION platform.create_monthly_partitions(regclass, integer) FROM PUBLIC;

COMMENT ON FUNCTION platform.create_monthly_partitions(regclass, integer) IS
    'Creates missing monthly partitions <table>_YYYY_MM of a range-partitioned table for the current UTC month .. +months_ahead (0..120); returns the number created. Called only by the SECURITY DEFINER ensure_*_partitions() wrappers.';

-- -----------------------------------------------------------------------------
-- Transactional outbox
-- -----------------------------------------------------------------------------
-- A service writes its domain event here in the same transaction as the state
-- change. Consumers keep a cursor (last_txid, last_id) in outbox_consumers and
-- read, at least once and in commit-safe order:
--     SELECT ... FROM platform.outbox
--      WHERE (txid, id) > ($last_txid, $last_id)
--        AND txid < pg_snapshot_xmin(pg_current_snapshot())
--      ORDER BY txid, id LIMIT $n;
-- The xmin bound skips rows of transactions still in flight, so a row with a
-- smaller id committed later is never jumped over. The statement-level trigger
-- wakes LISTEN flatrender_outbox listeners; it is a hint only, consumers also
-- poll.
CREATE TABLE platform.outbox (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_type     text        NOT NULL,   -- full proto message name, e.g. 'flatrender.events.v1.RenderJobCompleted'
    source         text        NOT NULL,   -- service name: identity, content, studio, render, file, notification
    aggregate_type text        NOT NULL,   -- e.g. 'render_job'
    aggregate_id   text        NOT NULL,   -- id of that aggregate (uuid as text usually)
    tenant_id      uuid        NULL,       -- soft reference: identity.tenants.id (NULL for platform-wide events)
    payload        bytea       NOT NULL,   -- encoded protobuf message of type event_type
    trace_context  jsonb       NOT NULL DEFAULT '{}',  -- W3C {"traceparent": ..., "tracestate": ...}
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX outbox_txid_id_idx ON platform.outbox (txid, id);

COMMENT ON TABLE  platform.outbox IS 'Transactional outbox of domain events; read by consumers through (txid, id) cursors.';
COMMENT ON COLUMN platform.outbox.txid IS 'Writing transaction id; consumers only read txid < pg_snapshot_xmin(pg_current_snapshot()).';
COMMENT ON COLUMN platform.outbox.event_type IS 'Full proto message name, e.g. flatrender.events.v1.RenderJobCompleted.';
COMMENT ON COLUMN platform.outbox.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN platform.outbox.payload IS 'Encoded protobuf of the event_type message.';
COMMENT ON COLUMN platform.outbox.trace_context IS 'W3C trace context: {"traceparent": "...", "tracestate": "..."}.';

CREATE FUNCTION platform.outbox_notify()
    RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify('flatrender_outbox', '');
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION platform.outbox_notify() IS 'AFTER INSERT statement trigger on platform.outbox: NOTIFY flatrender_outbox (delivered at commit).';

CREATE TRIGGER outbox_notify
    AFTER INSERT ON platform.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION platform.outbox_notify();

-- One row per consumer: its cursor into platform.outbox. A consumer updates its
-- row in the same transaction as the effects of the events it handled.
CREATE TABLE platform.outbox_consumers (
    name       text        PRIMARY KEY,
    last_txid  xid8        NOT NULL DEFAULT '0',
    last_id    bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE platform.outbox_consumers IS 'Cursor (last_txid, last_id) of each outbox consumer.';

CREATE TRIGGER set_updated_at BEFORE UPDATE ON platform.outbox_consumers
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

-- -----------------------------------------------------------------------------
-- platform privileges: exactly these, for every service role
-- -----------------------------------------------------------------------------
REVOKE ALL ON FUNCTION platform.set_updated_at() FROM PUBLIC;
REVOKE ALL ON FUNCTION platform.outbox_notify()  FROM PUBLIC;  -- only ever fired as a trigger

GRANT USAGE ON SCHEMA platform
    TO flatrender_identity, flatrender_content, flatrender_studio,
       flatrender_render, flatrender_file, flatrender_notification;
GRANT SELECT, INSERT ON platform.outbox
    TO flatrender_identity, flatrender_content, flatrender_studio,
       flatrender_render, flatrender_file, flatrender_notification;
GRANT SELECT, INSERT, UPDATE ON platform.outbox_consumers
    TO flatrender_identity, flatrender_content, flatrender_studio,
       flatrender_render, flatrender_file, flatrender_notification;
GRANT EXECUTE ON FUNCTION platform.set_updated_at()
    TO flatrender_identity, flatrender_content, flatrender_studio,
       flatrender_render, flatrender_file, flatrender_notification;
