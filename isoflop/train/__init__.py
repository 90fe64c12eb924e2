"""The PyTorch trainer: model, data pipeline and loop. Submodules import torch lazily."""
