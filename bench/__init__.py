"""`make bench`: rlsproxy against PostgreSQL directly and PgBouncer, on a throwaway cluster.

Run with `python -m bench`; bench/README.md describes the scenarios and how to read the output.
"""
