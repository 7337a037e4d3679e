-- Supabase-compatible auth helpers for plain PostgreSQL.
--
-- rlsproxy runs every client transaction as
--     select set_config('role', <anon|authenticated|...>, true),
--            set_config('request.jwt.claims', <verified JWT claims as json>, true)
-- so policies written for Supabase (auth.uid() = user_id, ...) work unchanged.
--
-- Idempotent: safe to run again (CREATE SCHEMA IF NOT EXISTS, CREATE OR REPLACE FUNCTION).
-- The functions are SECURITY INVOKER (the default) and STABLE, so the planner may evaluate
-- "(select auth.uid())" once per statement as an initPlan. EXECUTE is granted to PUBLIC by default.
--
-- Like Supabase's own definitions, the legacy per-claim settings (request.jwt.claim.sub,
-- request.jwt.claim) are consulted by auth.uid() and auth.jwt() BEFORE request.jwt.claims.
-- Anything that lets a client set request.jwt.* itself therefore lets it choose its identity:
-- the proxy must never pass such a SET / set_config through.

CREATE SCHEMA IF NOT EXISTS auth;

COMMENT ON SCHEMA auth IS 'Supabase-compatible auth helpers (rlsproxy)';

CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid
    LANGUAGE sql STABLE
AS $$
    SELECT nullif(
        coalesce(
            nullif(current_setting('request.jwt.claim.sub', true), ''),
            nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
        ),
        ''
    )::uuid
$$;

COMMENT ON FUNCTION auth.uid() IS
    'The "sub" claim of the current request''s JWT as uuid, or NULL when there is none '
    '(request.jwt.claim.sub, else request.jwt.claims ->> ''sub'').';

CREATE OR REPLACE FUNCTION auth.role() RETURNS text
    LANGUAGE sql STABLE
AS $$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role',
        nullif(current_setting('request.jwt.claim.role', true), '')
    )::text
$$;

COMMENT ON FUNCTION auth.role() IS
    'The "role" claim of the current request''s JWT (request.jwt.claims ->> ''role'', '
    'else request.jwt.claim.role), or NULL.';

CREATE OR REPLACE FUNCTION auth.jwt() RETURNS jsonb
    LANGUAGE sql STABLE
AS $$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claim', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')
    )::jsonb
$$;

COMMENT ON FUNCTION auth.jwt() IS
    'All claims of the current request''s JWT as jsonb (request.jwt.claim, else request.jwt.claims), '
    'or NULL when there is no request context.';
