"""Key statistics: text corpora, the second moment C of the keys, its cache and Ray shards."""
