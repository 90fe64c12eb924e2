"""Training data: corpus sources, BPE tokenizer, checksummed token shards, packing sampler.

``prepare_data(DataConfig(), cache_dir=None) -> TokenData`` tokenizes the corpus once;
``PackedSampler(data.train, seq_len, batch_size, seed, rank, world)`` draws resumable training batches.
"""

from isoflop.train.data.config import DataConfig
from isoflop.train.data.prepare import TokenData, prepare_data
from isoflop.train.data.sampler import PackedSampler

__all__ = ["DataConfig", "PackedSampler", "TokenData", "prepare_data"]
