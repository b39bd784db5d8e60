"""longqa: build LongQA-style instruction data from long documents.

`python -m longqa.build` reads, validates, splits, renders, tokenizes and writes a dataset; importing this package
imports neither torch nor transformers (they load only when a tokenizer is needed).
"""

__version__ = "0.1.0"
