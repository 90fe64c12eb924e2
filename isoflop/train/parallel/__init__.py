"""Tensor, sequence and pipeline parallelism composed from PyTorch's own parts, in torchtitan's order.

``mesh`` builds the DeviceMesh from the layout; ``tensor`` applies TP + sequence parallelism and loss
parallelism; ``pipeline`` cuts the model into ``torch.distributed.pipelining`` stages; ``apply`` composes
them (TP -> activation checkpointing -> torch.compile -> FSDP2 -> pipeline schedule) into one trainer step.
"""
