"""The label convention of tokenized samples, shared by the builder and the trainer (no pydantic, no torch).

`labels[i]` is the target of position i in Hugging Face's convention (the loss shifts it by one); a token that is no
target (the prompt, padding, the first token of a packed sample) has label `IGNORE_INDEX`, PyTorch cross-entropy's
`ignore_index`.
"""

IGNORE_INDEX = -100
