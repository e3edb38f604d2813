"""The HTTP layer: the aiohttp app, its routes and views, the metrics site, the runner."""
