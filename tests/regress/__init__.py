"""`make regress`: PostgreSQL's regression suite against a shard and through the proxy."""
