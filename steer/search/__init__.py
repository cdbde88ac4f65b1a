"""Search over the denoising chain: Diffusion Tree Sampling / Search, beam search, zero-order noise
search and search over paths. Each method: ``method(process, reward, prompts, *, generator, budget,
callback, **options) -> Result``."""
from steer.search.beam import beam
from steer.search.dts import SearchResult, dts, dts_star
from steer.search.tree import SearchTree
from steer.search.zero_order import path_search, zero_order

__all__ = ["dts", "dts_star", "beam", "zero_order", "path_search", "SearchResult", "SearchTree"]
