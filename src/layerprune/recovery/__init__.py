"""Finetuning a pruned checkpoint back (TRL): SFT on a dataset or self-generated responses, distillation."""
