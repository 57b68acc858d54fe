//! The engine's one error enum. Each message says what was wrong and which limit to change.

/// Why a write was refused. The write was not applied when one of these is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Keys must be at least one byte long.
    #[error("key is empty: keys must be at least one byte long")]
    EmptyKey,
    /// The key is longer than `Config::max_key_len`.
    #[error("key is {len} bytes, above the limit of {max} bytes (max_key_len)")]
    KeyTooLarge {
        /// Length of the key given.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The value is longer than `Config::max_value_len`.
    #[error("value is {len} bytes, above the limit of {max} bytes (max_value_len)")]
    ValueTooLarge {
        /// Length of the value given.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The entry alone would be charged more than the whole store may hold.
    #[error(
        "entry would be charged {charge} bytes, more than this store's memory limit of \
         {max_memory} bytes (max_memory); store a smaller value or raise the limit"
    )]
    EntryTooLarge {
        /// Bytes the entry would be charged (with a deadline, its largest form).
        charge: u64,
        /// The configured limit.
        max_memory: u64,
    },
    /// The store's block addresses are used up: one store can name at most `class_bytes`
    /// bytes of class pages (blocks up to 1 KiB) and `large_blocks` larger blocks, and
    /// evicting every other entry did not free an address of the kind needed.
    #[error(
        "store has no block address left: one shard names at most {class_bytes} bytes of \
         blocks up to 1 KiB and {large_blocks} larger blocks; use more shards"
    )]
    TooManyEntries {
        /// The most bytes of class pages one store can address.
        class_bytes: u64,
        /// The most blocks above 1 KiB one store can address.
        large_blocks: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_limit_to_change() {
        let cases = [
            (Error::EmptyKey, "key is empty"),
            (
                Error::KeyTooLarge {
                    len: 70_000,
                    max: 65_536,
                },
                "max_key_len",
            ),
            (Error::ValueTooLarge { len: 20, max: 10 }, "max_value_len"),
            (
                Error::EntryTooLarge {
                    charge: 200,
                    max_memory: 100,
                },
                "max_memory",
            ),
            (
                Error::TooManyEntries {
                    class_bytes: 7,
                    large_blocks: 1,
                },
                "more shards",
            ),
        ];
        for (err, needle) in cases {
            assert!(err.to_string().contains(needle), "{err}");
        }
    }
}
