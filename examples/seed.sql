-- Seed rows for examples/schema.sql: two users, one private and one public note each.
-- Run as postgres (a superuser, so RLS does not apply). Idempotent: fixed ids, ON CONFLICT DO NOTHING.

INSERT INTO auth.users (id, email) VALUES
    ('11111111-1111-1111-1111-111111111111', 'alice@example.com'),
    ('22222222-2222-2222-2222-222222222222', 'bob@example.com')
ON CONFLICT DO NOTHING;

INSERT INTO public.notes (id, user_id, title, content, is_public) VALUES
    ('aaaaaaaa-0000-0000-0000-000000000001', '11111111-1111-1111-1111-111111111111',
     'alice private', 'only alice may read this', false),
    ('aaaaaaaa-0000-0000-0000-000000000002', '11111111-1111-1111-1111-111111111111',
     'alice public', 'anyone may read this', true),
    ('bbbbbbbb-0000-0000-0000-000000000001', '22222222-2222-2222-2222-222222222222',
     'bob private', 'only bob may read this', false),
    ('bbbbbbbb-0000-0000-0000-000000000002', '22222222-2222-2222-2222-222222222222',
     'bob public', 'anyone may read this', true)
ON CONFLICT DO NOTHING;
