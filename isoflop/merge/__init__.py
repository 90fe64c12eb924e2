"""Model merging (``isoflop merge``): linear soups, task arithmetic, TIES, DARE and SLERP, streamed tensor by
tensor over safetensors shards, plus LAWA checkpoint averaging along a run (imports torch)."""
