-- Roles for the rlsproxy example (Supabase naming). Run as a superuser with psql; idempotent.
--
--   anon, authenticated   NOLOGIN, subject to RLS: the proxy switches to one of them per transaction
--   service_role          NOLOGIN BYPASSRLS: server-side jobs only, never for end users
--   authenticator         the proxy's upstream login. NOINHERIT: on its own it holds no privileges
--                         at all, so a transaction that somehow runs without a role switch fails closed
--   authenticator_md5     the same, with an md5-stored password (to test md5 upstream authentication)
--   rlsproxy_service      NOINHERIT login that may switch to service_role
--
-- Passwords are not stored here. Pass them as psql variables, e.g.
--   psql -v authenticator_password=... -v service_password=... -v md5_password=... -f roles.sql
-- (each is optional; a role whose variable is not given keeps its current password).

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN
        CREATE ROLE service_role NOLOGIN BYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticator') THEN
        CREATE ROLE authenticator LOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticator_md5') THEN
        CREATE ROLE authenticator_md5 LOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rlsproxy_service') THEN
        CREATE ROLE rlsproxy_service LOGIN NOINHERIT;
    END IF;
END
$$;

-- Re-assert the attributes in case the roles already existed with others.
ALTER ROLE anon NOLOGIN NOBYPASSRLS;
ALTER ROLE authenticated NOLOGIN NOBYPASSRLS;
ALTER ROLE service_role NOLOGIN BYPASSRLS;
ALTER ROLE authenticator LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
ALTER ROLE authenticator_md5 LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
ALTER ROLE rlsproxy_service LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;

-- Membership is what allows set_config('role', ...) / SET ROLE; NOINHERIT means it grants nothing else.
GRANT anon, authenticated TO authenticator;
GRANT anon, authenticated TO authenticator_md5;
GRANT service_role TO rlsproxy_service;

\if :{?authenticator_password}
ALTER ROLE authenticator PASSWORD :'authenticator_password';
\endif

\if :{?service_password}
ALTER ROLE rlsproxy_service PASSWORD :'service_password';
\endif

\if :{?md5_password}
-- PostgreSQL 18 warns that md5 passwords are deprecated; that is expected here.
SET password_encryption = 'md5';
ALTER ROLE authenticator_md5 PASSWORD :'md5_password';
RESET password_encryption;
\endif
