"""Card templates rendered by `longqa` (datasets) and `sft` (models)."""
