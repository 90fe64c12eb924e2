"""The PyTorch trainer: model, optimizer, data, loop, checkpoints and Hugging Face export (imports torch).

Nothing here is imported by the torch-free packages (``isoflop.spec``, ``hardware``, ``perf``, ``laws``,
``plan``); import the submodules directly, e.g. ``from isoflop.train.model import Transformer``.
"""
