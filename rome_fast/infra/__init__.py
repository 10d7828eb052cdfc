"""Infrastructure: optional imports, the data and cache folders, digests, downloads, timers, Ray."""
