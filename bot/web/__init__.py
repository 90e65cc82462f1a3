"""The web console: a Gradio page on the same queue, engine and history as the Discord bot (docs/web.md).

`jobs` is the console's one coupling to the jobs service and the store; `form` checks what the page sends;
`console` builds the Gradio Blocks; `server` serves it (uvicorn on the bot's event loop) and refuses an exposed
address without a password. Importing this package imports neither gradio nor discord.
"""
