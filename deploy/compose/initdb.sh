#!/usr/bin/env bash
# Loads the rlsproxy demo database on the first start of the postgres container (the official
# image runs /docker-entrypoint-initdb.d/* once, on an empty data directory, as the superuser,
# with the server listening on its unix socket only).
#
# Order matters: roles first (schema.sql grants to them), then the auth.* helper functions
# (schema.sql's policies call auth.uid()), then the schema, then the seed rows.
# roles.sql stores no passwords itself; it takes them as psql variables, passed here from the
# same environment variables rlsproxy reads.
#
# The image sources this file when it is not executable, so: no `exit`, and fail via psql's
# ON_ERROR_STOP (the entrypoint runs with `set -e`).
set -Eeo pipefail  # as the entrypoint itself; no -u, which would leak into it when sourced

: "${RLSPROXY_UPSTREAM_PASSWORD:?RLSPROXY_UPSTREAM_PASSWORD must be set for the postgres service}"
: "${RLSPROXY_SERVICE_PASSWORD:?RLSPROXY_SERVICE_PASSWORD must be set for the postgres service}"

for sql in \
    /rlsproxy-sql/10-roles.sql \
    /rlsproxy-sql/20-auth.sql \
    /rlsproxy-sql/30-schema.sql \
    /rlsproxy-sql/40-seed.sql
do
    echo "rlsproxy initdb: loading ${sql}"
    psql --no-psqlrc --no-password -v ON_ERROR_STOP=1 \
        --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-app}" \
        -v authenticator_password="${RLSPROXY_UPSTREAM_PASSWORD}" \
        -v service_password="${RLSPROXY_SERVICE_PASSWORD}" \
        -f "${sql}"
done
