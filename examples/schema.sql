-- The multi-user notes app from the RLS guide, for plain PostgreSQL behind rlsproxy.
-- Needs examples/roles.sql and rlsproxy/sql/auth.sql first. Run as postgres (the owner); idempotent.
--
-- After this:
--   anon          sees only is_public notes, cannot write
--   authenticated sees its own notes + public ones; creates, updates and deletes only its own
--   service_role  bypasses RLS (BYPASSRLS) and sees everything
--   authenticator (the proxy's login, NOINHERIT) has no privilege on notes at all: fails closed

-- Stand-in for Supabase's auth.users (just enough for the foreign key and the seed rows).
CREATE TABLE IF NOT EXISTS auth.users (
    id    uuid PRIMARY KEY,
    email text UNIQUE NOT NULL
);

CREATE TABLE IF NOT EXISTS public.notes (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid REFERENCES auth.users(id) ON DELETE CASCADE,
    title      text NOT NULL,
    content    text,
    is_public  boolean DEFAULT false,
    created_at timestamptz DEFAULT now()
);

ALTER TABLE auth.users OWNER TO postgres;
ALTER TABLE public.notes OWNER TO postgres;

-- The policies filter on user_id: without this index every query is a sequential scan.
CREATE INDEX IF NOT EXISTS notes_user_id_idx ON public.notes (user_id);

-- Enable RLS (CRITICAL -- don't skip). Default deny for every role without BYPASSRLS.
ALTER TABLE public.notes ENABLE ROW LEVEL SECURITY;

-- The five policies from the guide. "(select auth.uid())" lets the planner evaluate the
-- function once per statement (initPlan) instead of once per row.
DROP POLICY IF EXISTS "Read public notes" ON public.notes;
CREATE POLICY "Read public notes"
    ON public.notes FOR SELECT
    USING (is_public = true);

DROP POLICY IF EXISTS "Read own notes" ON public.notes;
CREATE POLICY "Read own notes"
    ON public.notes FOR SELECT
    USING ((select auth.uid()) = user_id);

DROP POLICY IF EXISTS "Create own notes" ON public.notes;
CREATE POLICY "Create own notes"
    ON public.notes FOR INSERT
    WITH CHECK ((select auth.uid()) = user_id);

DROP POLICY IF EXISTS "Update own notes" ON public.notes;
CREATE POLICY "Update own notes"
    ON public.notes FOR UPDATE
    USING ((select auth.uid()) = user_id)
    WITH CHECK ((select auth.uid()) = user_id);

DROP POLICY IF EXISTS "Delete own notes" ON public.notes;
CREATE POLICY "Delete own notes"
    ON public.notes FOR DELETE
    USING ((select auth.uid()) = user_id);

-- Privileges. RLS only filters rows a role could otherwise reach, so table grants come first.
GRANT USAGE ON SCHEMA public, auth TO anon, authenticated, service_role;
GRANT SELECT ON public.notes TO anon;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.notes TO authenticated;
GRANT ALL ON public.notes TO service_role;
GRANT SELECT ON auth.users TO service_role;
GRANT EXECUTE ON FUNCTION auth.uid(), auth.role(), auth.jwt() TO anon, authenticated, service_role;
