"""The PostgreSQL wire protocol, sans I/O: framing, messages, authentication, SQLSTATE errors."""
