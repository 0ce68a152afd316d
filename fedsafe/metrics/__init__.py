"""Judges and metrics as pure functions of text and numbers: the rule (refusal keyword) judge, the LLM
judges' prompt formats and parsers (the model behind a judge is passed in as a completion function)."""
