"""Fine-tuning of Hugging Face causal LMs (full, LoRA, DoRA, QLoRA through peft) with predicted and measured
memory. Needs the ``finetune`` extra (peft, bitsandbytes) on top of ``train``."""
