"""python -m longqa.generate --docs DOCS --endpoint URL --model NAME

Questions and answers from a folder of documents, by any OpenAI-compatible chat-completions server:
plan (kinds and passages spread over each document) → ask a question from the passage(s) → answer it from the whole
document (the passage(s) when the document does not fit the generator's window) with supporting quotes → check
(quotes in the document, no near-duplicate question) → append to `qa.jsonl` (read by `longqa.build --format docs`)
or `rejects.jsonl` (the builder's reject format). A rerun continues where a killed run stopped.

| module | what |
|---|---|
| `plan` | documents of the folder; per document, the question slots: kind and passage(s), seeded |
| `prompts` | the messages of question and answer requests; reading a JSON reply |
| `checks` | grounding (quotes occur in the document) and near-duplicate questions |
| `client` | the `openai` async client (retries, backoff, timeouts) with request/status/token counts |
| `run` | the journal (resume), the workers, the summary |
"""
