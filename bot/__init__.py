"""fluxbot: the Discord side (client, cogs, views) and the command line."""
