"""Tool calls: Python functions a model may call, with OpenAI's function schema, calls constrained to a
valid call of one of them, run with a timeout, their results fed back as `tool` messages."""
