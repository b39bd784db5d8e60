"""LongLoRA fine-tuning: model loading, RoPE scaling, S2-Attn, LoRA+, collation, training, export, evaluation."""
