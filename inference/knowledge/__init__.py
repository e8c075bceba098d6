"""The explicit path: LLM agents write typed item knowledge offline; it becomes item vectors and atomic intents."""
