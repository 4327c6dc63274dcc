"""Online resharding: range moves between shards as resumable jobs run by the elected manager."""
