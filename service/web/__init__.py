"""The HTTP server process: the app's composition, gunicorn's arbiter and worker, connections."""
