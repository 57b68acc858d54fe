//! Redistribution of a data directory to a new shard count.
