"""Blocks of pinned blobs, kept on local disk and in memory; knows nothing of FUSE."""

from amlfs.cache.blocks import BlockCache, BlockKey, Cached, CacheStats
from amlfs.cache.hot import HotBlocks

__all__ = ["BlockCache", "BlockKey", "CacheStats", "Cached", "HotBlocks"]
