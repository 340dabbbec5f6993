"""memchat's HTTP server: an OpenAI-compatible API, LangServe routes and the web chat page."""
