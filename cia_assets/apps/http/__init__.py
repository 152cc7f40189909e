"""The chat app: the page, the chat API, the OpenAI-compatible API and the source view."""
