"""The asyncio data plane: listener, client sessions, server connections, pools, fan-out."""
